// The dashboard's first load, for history_bench (bench/history_bench.cc starts moatd and runs
// this): what moatd sends for /dashboard/ (index.html and the assets it names: raw bytes, what
// gzip -9 would make of them, whether moatd compresses) and the time to first load in Debian's
// headless chromium (puppeteer-core from tests/browser's locked install), signed in through the
// API (POST /dashboard/api/session; the cookie set in the browser before it navigates).
// Times are the page's own, from its navigation start: DOMContentLoaded, load, and the first
// row of the live table (a MutationObserver installed before any script of the page runs).
//   cold: a new browser with a new profile per load (nothing cached);
//   warm: a new tab of one browser that has loaded the page before (its HTTP cache warm);
//   history: the History page's first table of the team's records, warm.
// Prints one JSON object on stdout.
//
// env: MOAT_URL, MOAT_KEY (an API key of the team), MOAT_CHROMIUM, MOAT_PROFILE_ROOT (a directory
// the profiles are made in), MOAT_LOADS (loads per kind, default 10), MOAT_PUPPETEER_DIR (a
// directory whose node_modules has puppeteer-core).
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import zlib from 'node:zlib'

for (const name of ['MOAT_URL', 'MOAT_KEY', 'MOAT_CHROMIUM', 'MOAT_PROFILE_ROOT', 'MOAT_PUPPETEER_DIR']) {
  if (!process.env[name]) throw new Error(`${name} must be set (bench/history_bench.cc sets it)`)
}
const base = process.env.MOAT_URL
const N = Number(process.env.MOAT_LOADS || 10)
const require = createRequire(path.join(process.env.MOAT_PUPPETEER_DIR, 'package.json'))
const mod = await import(pathToFileURL(require.resolve('puppeteer-core')).href)
const puppeteer = typeof mod.launch === 'function' ? mod : mod.default

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  const r = (v) => Math.round(v * 10) / 10
  return { n: s.length, p50: r(q(0.5)), p99: r(q(0.99)), min: r(s[0]), max: r(s[s.length - 1]) }
}

// 1. What moatd sends: index.html and every asset it names, as a browser would ask for them.
async function sizes() {
  const files = []
  const get = async (route) => {
    const res = await fetch(`${base}${route}`, { headers: { 'Accept-Encoding': 'gzip, deflate, br' } })
    if (res.status !== 200) throw new Error(`GET ${route}: HTTP ${res.status}`)
    const body = Buffer.from(await res.arrayBuffer())
    files.push({
      path: route,
      contentType: res.headers.get('content-type'),
      contentEncoding: res.headers.get('content-encoding'),
      cacheControl: res.headers.get('cache-control'),
      bytesSent: body.length,
      gzip9Bytes: zlib.gzipSync(body, { level: 9 }).length,
    })
    return body.toString('utf8')
  }
  const html = await get('/dashboard/')
  for (const m of html.matchAll(/(?:src|href)="(\/dashboard\/[^"]+)"/g)) await get(m[1])
  const sum = (k) => files.reduce((a, f) => a + f[k], 0)
  return {
    files,
    totalBytesSent: sum('bytesSent'),
    totalGzip9Bytes: sum('gzip9Bytes'),
    compressed: files.some((f) => f.contentEncoding),
  }
}

// A session cookie for the team (the page reads its CSRF token back with GET
// /dashboard/api/session, as after any reload).
async function signIn() {
  const res = await fetch(`${base}/dashboard/api/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ apiKey: process.env.MOAT_KEY }),
  })
  if (res.status !== 200) throw new Error(`POST /dashboard/api/session: HTTP ${res.status} ${await res.text()}`)
  const m = /moat_session=([^;]+)/.exec(res.headers.get('set-cookie') || '')
  if (!m) throw new Error('POST /dashboard/api/session set no moat_session cookie')
  return { name: 'moat_session', value: m[1], url: base, httpOnly: true, sameSite: 'Strict' }
}

async function launch(profile) {
  return puppeteer.launch({
    executablePath: process.env.MOAT_CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check'],
    protocolTimeout: 60_000,
  })
}

// Loads `route` in a new tab of `browser` until `selector` is in the page: the page's own times
// (ms from its navigation start) and the bytes it transferred.
async function load(browser, cookie, route, selector) {
  const page = await browser.newPage()
  try {
    await page.setViewport({ width: 1400, height: 900 })
    if (typeof browser.setCookie === 'function') await browser.setCookie(cookie)
    else await page.setCookie(cookie)
    await page.evaluateOnNewDocument((sel) => {
      const seen = () => {
        if (window.__moatRendered === undefined && document.querySelector(sel)) {
          window.__moatRendered = performance.now()
          return true
        }
        return false
      }
      new MutationObserver((_, obs) => seen() && obs.disconnect()).observe(document, {
        childList: true,
        subtree: true,
      })
    }, selector)
    await page.goto(`${base}${route}`, { waitUntil: 'load', timeout: 60_000 })
    await page.waitForFunction(() => window.__moatRendered !== undefined, { timeout: 60_000, polling: 50 })
    return await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0]
      const res = performance.getEntriesByType('resource').filter((r) => r.name.includes('/dashboard/assets/'))
      return {
        domContentLoaded: nav.domContentLoadedEventEnd,
        load: nav.loadEventEnd,
        rendered: window.__moatRendered,
        transferBytes: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
      }
    })
  } finally {
    await page.close()
  }
}

function summary(runs) {
  return {
    dom_content_loaded_ms: stats(runs.map((r) => r.domContentLoaded)),
    load_ms: stats(runs.map((r) => r.load)),
    table_rendered_ms: stats(runs.map((r) => r.rendered)),
    transfer_bytes: stats(runs.map((r) => r.transferBytes)),
  }
}

const out = { loads: N, sent: await sizes() }
const cookie = await signIn()
const live = '[data-testid="live-table"] tbody tr'
const history = '[data-testid="history-table"] tbody tr'

// Cold: a browser and profile of its own per load; its start is not timed.
const cold = []
for (let i = 0; i < N; i++) {
  const profile = path.join(process.env.MOAT_PROFILE_ROOT, `cold-${i}`)
  const browser = await launch(profile)
  try {
    cold.push(await load(browser, cookie, '/dashboard/', live))
  } finally {
    await browser.close()
    fs.rmSync(profile, { recursive: true, force: true })
  }
}
out.cold = summary(cold)

// Warm: one browser, loaded once before the timed loads.
{
  const profile = path.join(process.env.MOAT_PROFILE_ROOT, 'warm')
  const browser = await launch(profile)
  try {
    await load(browser, cookie, '/dashboard/', live)
    await load(browser, cookie, '/dashboard/history', history)
    const warm = []
    const hist = []
    for (let i = 0; i < N; i++) {
      warm.push(await load(browser, cookie, '/dashboard/', live))
      hist.push(await load(browser, cookie, '/dashboard/history', history))
    }
    out.warm = summary(warm)
    out.history_page_warm = summary(hist)
  } finally {
    await browser.close()
    fs.rmSync(profile, { recursive: true, force: true })
  }
}

console.log(JSON.stringify(out, null, 2))
