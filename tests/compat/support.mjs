// What the compatibility tests share (not a test file: node --test does not pick it up).
import assert from 'node:assert/strict'
import http from 'node:http'

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Polls `predicate` every 100 ms until it holds; fails the test naming `what` after `timeoutMs`.
export async function waitFor(what, predicate, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    if (await predicate()) return
    await sleep(100)
  }
  assert.fail(`timed out waiting for ${what}`)
}

// One request to moatd as a wildcard DNS name would route it: `url`'s path and query, the Host
// header naming the sandbox (`<port>-<id>.<domain>`), no other credentials.
export function viaHost(host, url, { method = 'GET', body, headers = {} } = {}) {
  const u = new URL(url, process.env.E2B_API_URL)
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: new URL(process.env.E2B_API_URL).hostname,
        port: new URL(process.env.E2B_API_URL).port,
        path: u.pathname + u.search,
        method,
        headers: { Host: host, ...headers },
        timeout: 60_000,
      },
      (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }))
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error('request timed out')))
    req.on('error', reject)
    req.end(body)
  })
}
