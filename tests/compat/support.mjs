// What the compatibility tests share (not a test file: node --test does not pick it up).
import assert from 'node:assert/strict'

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
