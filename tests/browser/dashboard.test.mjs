// The dashboard in a real browser: puppeteer-core drives Debian's chromium (headless) against a
// real moatd that run.sh started, while the official e2b SDK creates sandboxes and runs commands
// exactly as a user would. One sequence of steps, each a test, sharing the browser and sandboxes.
// Screenshots of every page land in $MOAT_ARTIFACTS_DIR (run.sh: <build>/artifacts/dashboard/).
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import puppeteer from 'puppeteer-core'
import { CommandExitError, Sandbox } from 'e2b'

for (const name of ['E2B_API_URL', 'E2B_SANDBOX_URL', 'MOAT_ADMIN_KEY', 'MOAT_CHROMIUM', 'MOAT_BROWSER_PROFILE']) {
  assert.ok(process.env[name], `${name} must be set (run tests/browser/run.sh)`)
}
const base = process.env.E2B_API_URL
const artifacts = process.env.MOAT_ARTIFACTS_DIR || ''
const run = `b${process.pid}${Date.now()}`
const KEY_NAME = 'browser-tester'
const OTHER_KEY_NAME = 'other-tester'

// moat's own routes with an API key (not the browser's session).
async function moatApi(method, route, key, body) {
  const res = await fetch(`${base}${route}`, {
    method,
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  let json = null
  try {
    json = text ? JSON.parse(text) : null
  } catch {
    json = text
  }
  return { status: res.status, body: json }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const sel = (testid) => `[data-testid="${testid}"]`

describe('the dashboard in a browser', { concurrency: false, timeout: 300_000 }, () => {
  let browser
  let page // the first team's session
  let key // the first team's key (the admin team's, named KEY_NAME)
  let otherKey // a second team's key
  let sbx // the first team's sandbox
  let otherSbx // the second team's
  const pageErrors = []

  async function shot(name) {
    if (!artifacts) return
    await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true })
  }

  async function textOf(p, selector) {
    return p.$eval(selector, (el) => el.textContent ?? '')
  }

  // Waits until `selector`'s text includes `want` (a string or RegExp).
  async function waitText(p, selector, want, timeout = 20_000) {
    try {
      await p.waitForFunction(
        (s, w, isRe) => {
          const el = document.querySelector(s)
          if (!el) return false
          const t = el.textContent ?? ''
          return isRe ? new RegExp(w).test(t) : t.includes(w)
        },
        { timeout, polling: 100 },
        selector,
        want instanceof RegExp ? want.source : want,
        want instanceof RegExp,
      )
    } catch (e) {
      const now = await p.$eval(selector, (el) => el.textContent).catch(() => '(no such element)')
      throw new Error(`waiting for ${selector} to show ${want}: it shows ${JSON.stringify(now)} (${e.message})`)
    }
  }

  async function nav(p, testid, pageTestid) {
    await p.click(sel(testid))
    await p.waitForSelector(sel(pageTestid), { timeout: 10_000 })
  }

  // Waits for a page to be done loading: no "Loading…" left.
  async function settled(p) {
    await p.waitForFunction(() => !document.querySelector('[data-testid="loading"]'), { timeout: 20_000 })
  }

  async function openPage(context) {
    const p = await context.newPage()
    await p.setViewport({ width: 1400, height: 900 })
    p.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`))
    p.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) {
        pageErrors.push(`console: ${m.text()}`)
      }
    })
    return p
  }

  async function signInAs(p, apiKey) {
    await p.goto(`${base}/dashboard/`, { waitUntil: 'domcontentloaded' })
    await p.waitForSelector(sel('signin-key'))
    await p.type(sel('signin-key'), apiKey)
    await p.click(sel('signin-submit'))
    await p.waitForSelector(sel('nav-live'), { timeout: 15_000 })
  }

  before(async () => {
    if (artifacts) fs.mkdirSync(artifacts, { recursive: true })
    // A named key of the admin team (the one the browser signs in with), and a second team.
    const k = await moatApi('POST', '/keys', process.env.MOAT_ADMIN_KEY, { name: KEY_NAME })
    assert.equal(k.status, 201, JSON.stringify(k.body))
    key = k.body.key
    const o = await moatApi('POST', '/keys', process.env.MOAT_ADMIN_KEY, {
      name: OTHER_KEY_NAME,
      team: `browser-other-${process.pid}`,
    })
    assert.equal(o.status, 201, JSON.stringify(o.body))
    otherKey = o.body.key
    browser = await puppeteer.launch({
      executablePath: process.env.MOAT_CHROMIUM,
      headless: true,
      userDataDir: process.env.MOAT_BROWSER_PROFILE,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check'],
      protocolTimeout: 60_000,
    })
    page = await openPage(browser.defaultBrowserContext())
  })

  after(async () => {
    await Promise.allSettled([sbx?.kill(), otherSbx?.kill()])
    await browser?.close()
  })

  test('a wrong key is refused, with the server\'s message', async () => {
    await page.goto(`${base}/dashboard/`, { waitUntil: 'domcontentloaded' })
    await page.waitForSelector(sel('signin-key'))
    const type = await page.$eval(sel('signin-key'), (el) => [el.type, el.autocomplete])
    assert.deepEqual(type, ['password', 'off'])
    await page.type(sel('signin-key'), `e2b_${'0'.repeat(40)}`)
    await page.click(sel('signin-submit'))
    await waitText(page, sel('signin-error'), 'invalid API key')
    assert.equal(await page.$eval(sel('signin-key'), (el) => el.value), '', 'the field is cleared')
    assert.equal(await page.$(sel('nav-live')), null)
  })

  test('signs in with a key, which the page does not keep', async () => {
    await page.type(sel('signin-key'), key)
    await page.click(sel('signin-submit'))
    await page.waitForSelector(sel('nav-live'), { timeout: 15_000 })
    await waitText(page, sel('who'), KEY_NAME)
    const kept = await page.evaluate(() => ({
      local: JSON.stringify(Object.entries(localStorage)),
      session: JSON.stringify(Object.entries(sessionStorage)),
      cookie: document.cookie,
      url: location.href,
    }))
    for (const [where, v] of Object.entries(kept)) assert.ok(!v.includes(key), `the key is in ${where}`)
    assert.equal(kept.local, '[]')
    assert.equal(kept.session, '[]')
    // A reload resumes the session (GET /dashboard/api/session).
    await page.reload({ waitUntil: 'domcontentloaded' })
    await page.waitForSelector(sel('nav-live'), { timeout: 15_000 })
    // One moatd has no fleet: GET /hosts is [] and the Hosts entry stays hidden; the keys are
    // the admin team's to manage.
    await page.waitForSelector(sel('nav-keys'))
    await sleep(300)
    assert.equal(await page.$(sel('nav-hosts')), null, 'Hosts shows without a fleet')
  })

  test('a 401 anywhere (the key revoked) returns to the sign-in form', async () => {
    // A second key of the other team (a team's last key cannot be revoked), signed in, revoked.
    const k = await moatApi('POST', '/keys', otherKey, { name: 'revoked-soon' })
    assert.equal(k.status, 201, JSON.stringify(k.body))
    const context = await browser.createBrowserContext()
    try {
      const p = await openPage(context)
      await signInAs(p, k.body.key)
      await p.waitForSelector(sel('page-live'))
      const r = await moatApi('DELETE', `/keys/${k.body.id}`, otherKey)
      assert.equal(r.status, 204, JSON.stringify(r.body))
      // The live list's next poll gets 401.
      await p.waitForSelector(sel('signin-key'), { timeout: 15_000 })
      assert.equal(await p.$(sel('nav-live')), null)
    } finally {
      await context.close()
    }
  })

  test('a sandbox created through the SDK appears live', async () => {
    sbx = await Sandbox.create({ apiKey: key, metadata: { suite: 'browser', run } })
    await page.waitForSelector(sel(`sandbox-row-${sbx.sandboxId}`), { timeout: 15_000 })
    await waitText(page, sel(`state-${sbx.sandboxId}`), 'running')
    await waitText(page, sel(`sandbox-row-${sbx.sandboxId}`), `run=${run}`)
    // A CPU sample or two for the sparklines.
    await page.waitForFunction(
      (id) => document.querySelector(`[data-testid="cpu-spark-${id}"] polyline`) !== null,
      { timeout: 15_000 },
      sbx.sandboxId,
    )
    await shot('live')
  })

  test("another team's sandboxes are never shown, and the other way round", async () => {
    otherSbx = await Sandbox.create({ apiKey: otherKey, metadata: { suite: 'browser-other', run } })
    // The other team's session sees its own sandbox and not the first team's.
    const context = await browser.createBrowserContext()
    try {
      const other = await openPage(context)
      await signInAs(other, otherKey)
      await other.waitForSelector(sel(`sandbox-row-${otherSbx.sandboxId}`), { timeout: 15_000 })
      assert.equal(await other.$(sel(`sandbox-row-${sbx.sandboxId}`)), null, "the first team's sandbox shows")
      await other.goto(`${base}/dashboard/sandboxes/${sbx.sandboxId}`, { waitUntil: 'domcontentloaded' })
      await other.waitForSelector(sel('page-sandbox'))
      await other.waitForSelector('.error', { timeout: 15_000 })
      assert.equal(await other.$(sel('sandbox-summary')), null, "the first team's sandbox opens")
    } finally {
      await context.close()
    }
    // The first team's live list, after polls that began after the create, lacks it.
    await page.reload({ waitUntil: 'domcontentloaded' })
    await page.waitForSelector(sel(`sandbox-row-${sbx.sandboxId}`), { timeout: 15_000 })
    await sleep(2500)
    assert.equal(await page.$(sel(`sandbox-row-${otherSbx.sandboxId}`)), null, "the other team's sandbox shows")
    // Nor in its history.
    await nav(page, 'nav-history', 'page-history')
    await page.waitForSelector(sel(`history-row-${sbx.sandboxId}`), { timeout: 15_000 })
    assert.equal(await page.$(sel(`history-row-${otherSbx.sandboxId}`)), null, "the other team's sandbox is in history")
  })

  test('opens the sandbox; a failing command shows exit code 3 and its stderr', async () => {
    await nav(page, 'nav-live', 'page-live')
    await page.waitForSelector(sel(`open-${sbx.sandboxId}`), { timeout: 15_000 })
    await page.click(sel(`open-${sbx.sandboxId}`))
    await page.waitForSelector(sel('page-sandbox'))
    await waitText(page, sel('sandbox-id'), sbx.sandboxId)
    await waitText(page, sel('sandbox-state'), 'running')
    let err
    try {
      await sbx.commands.run('echo oops >&2; exit 3')
    } catch (e) {
      err = e
    }
    assert.ok(err instanceof CommandExitError, `expected a CommandExitError, got ${err}`)
    assert.equal(err.exitCode, 3)
    // The commands list refreshes while the sandbox lives.
    const id = await page.waitForFunction(
      () => {
        for (const row of document.querySelectorAll('[data-testid^="command-"]')) {
          const m = /^command-(\d+)$/.exec(row.getAttribute('data-testid') ?? '')
          if (!m) continue
          const text = row.querySelector(`[data-testid="command-text-${m[1]}"]`)?.textContent ?? ''
          if (text.includes('echo oops')) return m[1]
        }
        return null
      },
      { timeout: 20_000, polling: 200 },
    )
    const cmd = await id.jsonValue()
    await waitText(page, sel(`exit-${cmd}`), '3')
    assert.equal((await textOf(page, sel(`exit-${cmd}`))).trim(), '3')
    await waitText(page, sel(`stderr-${cmd}`), 'oops')
    assert.ok(await page.$eval(sel(`command-${cmd}`), (el) => el.classList.contains('failed')), 'the failure is not highlighted')
    assert.ok(await page.$eval(sel(`stderr-${cmd}`), (el) => el.closest('details')?.open === true), "a failure's stderr is not open")
    await shot('sandbox')
  })

  test('the terminal runs echo', async () => {
    await page.click(sel('terminal-open'))
    await waitText(page, sel('terminal-status'), 'open', 20_000)
    // The shell's prompt first, so that the typing is not lost in its start.
    await page.waitForFunction(() => (document.querySelector('.xterm-rows')?.textContent ?? '').trim().length > 0, {
      timeout: 20_000,
    })
    await page.click(sel('terminal'))
    await page.keyboard.type('echo hello-$((6*7))')
    await page.keyboard.press('Enter')
    await waitText(page, '.xterm-rows', 'hello-42', 20_000)
    await shot('terminal')
    await page.click(sel('terminal-close'))
  })

  test('kills the sandbox from the page (with a confirmation); history says by whom', async () => {
    await nav(page, 'nav-live', 'page-live')
    await page.waitForSelector(sel(`kill-${sbx.sandboxId}`), { timeout: 15_000 })
    await page.click(sel(`kill-${sbx.sandboxId}`))
    await page.waitForSelector(sel('confirm-dialog'))
    // Cancel first: nothing happens.
    await page.click(sel('cancel'))
    await page.waitForSelector(sel('confirm-dialog'), { hidden: true })
    assert.ok(await page.$(sel(`sandbox-row-${sbx.sandboxId}`)))
    await page.click(sel(`kill-${sbx.sandboxId}`))
    await page.waitForSelector(sel('confirm-dialog'))
    await page.click(sel('confirm'))
    await page.waitForSelector(sel('confirm-dialog'), { hidden: true, timeout: 20_000 })
    await page.waitForSelector(sel(`sandbox-row-${sbx.sandboxId}`), { hidden: true, timeout: 15_000 })
    const killed = sbx // (its kill() in after() is then a harmless no-op)
    await nav(page, 'nav-history', 'page-history')
    await page.waitForSelector(sel(`history-row-${killed.sandboxId}`), { timeout: 15_000 })
    await waitText(page, sel(`history-end-${killed.sandboxId}`), `killed by ${KEY_NAME}`)
    await shot('history')
    // Filters: this run's metadata finds it; live sandboxes only do not.
    await page.type(sel('filter-metadata'), `run=${run}`)
    await page.click(sel('filter-apply'))
    await page.waitForFunction(() => new URLSearchParams(location.search).has('metadata'))
    await page.waitForSelector(sel(`history-row-${killed.sandboxId}`), { timeout: 15_000 })
    await page.select(sel('filter-state'), 'live')
    await page.click(sel('filter-apply'))
    await page.waitForSelector(sel(`history-row-${killed.sandboxId}`), { hidden: true, timeout: 15_000 })
    await page.select(sel('filter-state'), '')
    await page.click(sel('filter-apply'))
    await page.waitForSelector(sel(`history-row-${killed.sandboxId}`), { timeout: 15_000 })
    // Its page: ended, and how.
    await page.click(sel(`history-open-${killed.sandboxId}`))
    await page.waitForSelector(sel('page-sandbox'))
    await waitText(page, sel('sandbox-ended-how'), `killed by ${KEY_NAME}`)
    await page.waitForSelector(sel('timeline'), { timeout: 15_000 })
    await waitText(page, sel('timeline'), 'killed')
    await shot('sandbox-ended')
  })

  test('usage shows running seconds and creates', async () => {
    await nav(page, 'nav-usage', 'page-usage')
    await page.waitForSelector(sel('usage-totals'), { timeout: 20_000 })
    await page.waitForFunction(
      () => Number(document.querySelector('[data-testid="usage-running-seconds"]')?.textContent) > 0,
      { timeout: 20_000 },
    )
    const creates = Number((await textOf(page, sel('usage-creates'))).replace(/,/g, ''))
    assert.ok(creates >= 1, `creates: ${creates}`)
    await settled(page)
    await shot('usage')
    // The CSV download: fetched with the CSRF header, saved from a Blob.
    const downloads = path.join(process.env.MOAT_BROWSER_PROFILE, 'downloads')
    fs.mkdirSync(downloads, { recursive: true })
    const cdp = await page.createCDPSession()
    await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: downloads })
    await page.click(sel('usage-csv'))
    let file
    for (let i = 0; i < 100 && !file; i++) {
      file = fs.readdirSync(downloads).find((f) => f.endsWith('.csv'))
      if (!file) await sleep(100)
    }
    assert.ok(file, 'no CSV was downloaded')
    const csv = fs.readFileSync(path.join(downloads, file), 'utf8')
    assert.match(csv.split('\n')[0], /runningSeconds/)
  })

  test('templates, snapshots, keys and audit pages show', async () => {
    await nav(page, 'nav-templates', 'page-templates')
    await settled(page)
    await shot('templates')
    await nav(page, 'nav-snapshots', 'page-snapshots')
    await settled(page)
    await shot('snapshots')
    await nav(page, 'nav-keys', 'page-keys')
    await page.waitForSelector(sel('keys-table'), { timeout: 15_000 })
    await waitText(page, sel('keys-table'), KEY_NAME)
    assert.ok(!(await textOf(page, sel('keys-table'))).includes(key), 'a key is shown in full')
    // A key made in the page is shown once, works, and is revoked behind a confirmation.
    await page.type(sel('key-name'), 'made-in-the-page')
    await page.click(sel('key-create'))
    await page.waitForSelector(sel('key-created-value'), { timeout: 15_000 })
    const made = await page.$eval(sel('key-created-value'), (el) => el.value)
    assert.match(made, /^e2b_[0-9a-f]+$/)
    assert.equal((await moatApi('GET', '/v2/sandboxes', made)).status, 200)
    await waitText(page, sel('keys-table'), 'made-in-the-page')
    await shot('keys')
    const madeId = await page.$$eval('[data-testid^="key-row-"]', (rows) => {
      const row = rows.find((r) => r.textContent.includes('made-in-the-page'))
      return row?.getAttribute('data-testid').slice('key-row-'.length)
    })
    assert.ok(madeId)
    await page.click(sel(`revoke-${madeId}`))
    await page.waitForSelector(sel('confirm-dialog'))
    await page.click(sel('confirm'))
    await page.waitForSelector(sel(`key-row-${madeId}`), { hidden: true, timeout: 15_000 })
    assert.equal((await moatApi('GET', '/v2/sandboxes', made)).status, 401)
    await nav(page, 'nav-audit', 'page-audit')
    await page.waitForSelector(sel('audit-table'), { timeout: 15_000 })
    await waitText(page, sel('audit-table'), 'sandbox.kill')
    await waitText(page, sel('audit-table'), sbx.sandboxId)
    await shot('audit')
  })

  test('signs out', async () => {
    await page.click(sel('signout'))
    await page.waitForSelector(sel('signin-key'), { timeout: 15_000 })
    // The session is gone on the server too: a reload lands on the sign-in form.
    await page.reload({ waitUntil: 'domcontentloaded' })
    await page.waitForSelector(sel('signin-key'), { timeout: 15_000 })
    assert.equal(await page.$(sel('nav-live')), null)
  })

  test('no script error and no CSP violation in any page', () => {
    assert.deepEqual(pageErrors, [])
  })
})
