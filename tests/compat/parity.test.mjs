// What E2B's own SDK suite expects of a sandbox (issue 14), through the official e2b SDK against
// moatd: envd 0.6 features (file metadata, watch events as envd gives them, entries in events,
// network-mount watches), signed file URLs, symlinks and listings as envd reports them, the
// errors of a killed sandbox, maskRequestHost, PTY reconnects, filesystem-only pause, auto-resume
// on port traffic, background commands across a pause, Template.exists. Configured only through
// E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL; run.sh starts moatd with --domain moat.test.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import {
  FileType,
  FilesystemEventType,
  FileNotFoundError,
  InvalidArgumentError,
  Sandbox,
  Template,
} from 'e2b'
import { sleep, viaHost, waitFor } from './support.mjs'

const created = []

async function create(opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 300_000, ...opts })
  created.push(sbx)
  return sbx
}

describe('E2B parity (issue 14)', { concurrency: false }, () => {
  let sbx

  before(async () => {
    sbx = await create()
  })

  after(async () => {
    await Promise.allSettled(created.map((s) => s.kill()))
  })

  test('the sandbox reports envd 0.6.4, whose features follow', async () => {
    assert.equal((await sbx.getInfo()).envdVersion, '0.6.4')
  })

  test('file metadata: written (multipart, octet-stream, writeFiles), read back, cleared, kept', async () => {
    const meta = { owner: 'ann', stage: 'raw' }
    const w = await sbx.files.write('/home/user/meta/a.txt', 'a', { metadata: meta })
    assert.deepEqual(w.metadata, meta)
    assert.deepEqual((await sbx.files.getInfo('/home/user/meta/a.txt')).metadata, meta)
    const o = await sbx.files.write('/home/user/meta/o.txt', 'o', { metadata: meta, useOctetStream: true })
    assert.deepEqual(o.metadata, meta)
    const many = await sbx.files.writeFiles(
      [
        { path: '/home/user/meta/m1.txt', data: '1' },
        { path: '/home/user/meta/m2.txt', data: '2' },
      ],
      { metadata: { batch: 'yes' } },
    )
    for (const m of many) assert.deepEqual(m.metadata, { batch: 'yes' })
    const listed = await sbx.files.list('/home/user/meta')
    assert.deepEqual(listed.find((e) => e.name === 'm2.txt').metadata, { batch: 'yes' })
    // A rename keeps it; an overwrite without metadata clears it.
    const moved = await sbx.files.rename('/home/user/meta/a.txt', '/home/user/meta/b.txt')
    assert.deepEqual(moved.metadata, meta)
    await sbx.files.write('/home/user/meta/b.txt', 'again')
    assert.equal((await sbx.files.getInfo('/home/user/meta/b.txt')).metadata, undefined)
    // Set inside the sandbox, seen outside.
    await sbx.commands.run(
      `python3 -c "import os; os.setxattr('/home/user/meta/b.txt', 'user.e2b.author', b'mish')"`,
    )
    assert.deepEqual((await sbx.files.getInfo('/home/user/meta/b.txt')).metadata, { author: 'mish' })
    // The client refuses a bad key before sending; moatd refuses one sent anyway, writing nothing.
    await assert.rejects(sbx.files.write('/home/user/meta/bad.txt', 'x', { metadata: { 'a b': 'c' } }), InvalidArgumentError)
    const raw = await viaHost(`49983-${sbx.sandboxId}.moat.test`, '/files?path=/home/user/meta/bad.txt', {
      method: 'POST',
      body: 'x',
      headers: {
        'Content-Type': 'application/octet-stream',
        'X-Access-Token': sbx.envdAccessToken,
        'X-Metadata-Key': 'caf\u00e9',
      },
    })
    assert.equal(raw.status, 400, raw.body)
    assert.match(JSON.parse(raw.body).message, /invalid metadata/)
    assert.equal(await sbx.files.exists('/home/user/meta/bad.txt'), false)
  })

  test('watchDir shows a write in place as envd does, with entries when asked', async () => {
    await sbx.files.makeDir('/home/user/wd')
    await sbx.files.write('/home/user/wd/old.txt', 'v1')
    const events = []
    const handle = await sbx.files.watchDir('/home/user/wd', (e) => events.push(e), { includeEntry: true })
    try {
      await sbx.files.write('/home/user/wd/old.txt', 'v2')
      await sbx.files.write('/home/user/wd/new.txt', 'new')
      await waitFor('a write event for old.txt and new.txt', () =>
        ['old.txt', 'new.txt'].every((n) => events.some((e) => e.name === n && e.type === FilesystemEventType.WRITE)))
      assert.ok(events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.CREATE))
      for (const e of events) assert.doesNotMatch(e.name, /moat-/, 'no temporary name is shown')
      const write = events.find((e) => e.name === 'new.txt' && e.type === FilesystemEventType.WRITE)
      assert.equal(write.entry?.name, 'new.txt')
      assert.equal(write.entry?.path, '/home/user/wd/new.txt')
      assert.equal(write.entry?.type, FileType.FILE)
    } finally {
      await handle.stop()
    }
    // allowNetworkMounts is accepted (the home directory is local either way).
    const local = await sbx.files.watchDir('/home/user/wd', () => {}, { allowNetworkMounts: true })
    await local.stop()
    await assert.rejects(sbx.files.watchDir('/home/user/nope', () => {}), FileNotFoundError)
  })

  test('signed file URLs work without the access token, per user; expired or forged → 401', async () => {
    const host = `49983-${sbx.sandboxId}.moat.test`
    const up = await sbx.uploadUrl('/home/user/signed.txt')
    assert.match(up, /signature=v1_/)
    const put = await viaHost(host, up, {
      method: 'POST',
      body: 'signed bytes',
      headers: { 'Content-Type': 'application/octet-stream' },
    })
    assert.equal(put.status, 200, put.body)
    assert.equal(await sbx.files.read('/home/user/signed.txt'), 'signed bytes')
    const down = await viaHost(host, await sbx.downloadUrl('/home/user/signed.txt'))
    assert.equal(down.status, 200, down.body)
    assert.equal(down.body, 'signed bytes')
    // As root: root's file, and the user's signature does not stand for root.
    await sbx.files.write('/root/secret.txt', 'root only', { user: 'root' })
    const asRoot = await sbx.downloadUrl('/root/secret.txt', { user: 'root' })
    assert.equal((await viaHost(host, asRoot)).body, 'root only')
    // A URL signed for the default user stays the default user's, whatever else is sent.
    const asDefault = await sbx.downloadUrl('/root/secret.txt')
    const basicRoot = await viaHost(host, asDefault, { headers: { Authorization: 'Basic cm9vdDo=' } })
    assert.notEqual(basicRoot.status, 200, basicRoot.body)
    assert.doesNotMatch(basicRoot.body, /root only/)
    const forged = asRoot.replace('username=root', 'username=user')
    assert.equal((await viaHost(host, forged)).status, 401)
    const tampered = new URL(asRoot)
    tampered.searchParams.set('signature', tampered.searchParams.get('signature').slice(0, -2) + 'AA')
    assert.equal((await viaHost(host, tampered.toString())).status, 401)
    const timed = await sbx.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: 60 })
    assert.equal((await viaHost(host, timed)).status, 200)
    const expired = await sbx.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: -10 })
    const gone = await viaHost(host, expired)
    assert.equal(gone.status, 401)
    assert.match(JSON.parse(gone.body).message, /expired/)
    const unsigned = await viaHost(host, '/files?path=/home/user/signed.txt')
    assert.equal(unsigned.status, 401)
  })

  test('symlinks and listings as envd reports them', async () => {
    await sbx.commands.run(
      'mkdir -p /home/user/ls/subdir1/subdir1_1 /home/user/ls/subdir1/subdir1_2 /home/user/ls/subdir2/subdir2_1 ' +
        '/home/user/ls/subdir2/subdir2_2 && echo hi > /home/user/ls/file1.txt && cd /home/user/ls && ' +
        'ln -s file1.txt link.txt && ln -s missing dangling',
    )
    const info = await sbx.files.getInfo('/home/user/ls/link.txt')
    assert.equal(info.name, 'link.txt')
    assert.equal(info.path, '/home/user/ls/link.txt')
    assert.equal(info.type, FileType.FILE)
    assert.equal(info.symlinkTarget, '/home/user/ls/file1.txt')
    const names = (await sbx.files.list('/home/user/ls', { depth: 2 })).map((e) => e.path.slice('/home/user/ls/'.length))
    assert.deepEqual(names, [
      'file1.txt',
      'link.txt',
      'subdir1',
      'subdir1/subdir1_1',
      'subdir1/subdir1_2',
      'subdir2',
      'subdir2/subdir2_1',
      'subdir2/subdir2_2',
    ])
  })

  test('command-scoped env vars, and sudo keeps them out', async () => {
    const r = await sbx.commands.run('echo $FOO', { envs: { FOO: 'bar' } })
    assert.equal(r.stdout.trim(), 'bar')
    const s = await sbx.commands.run('sudo echo "$FOO"')
    assert.equal(s.exitCode, 0)
    assert.equal(s.stdout.trim(), '')
  })

  test('a PTY keeps its environment across a reconnect', async () => {
    let out1 = ''
    const decoder = new TextDecoder()
    const t0 = Date.now()
    const pty = await sbx.pty.create({ cols: 80, rows: 24, envs: { FOO: 'bar' }, onData: (d) => { out1 += decoder.decode(d) } })
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo $FOO\n'))
    await waitFor('the first echo', () => out1.includes('bar'), 10_000)
    // E2B's own test allows 300 ms after the input: the figure here, under TCG, goes to the log.
    console.log(`pty: create + first echo in ${Date.now() - t0} ms`)
    await pty.disconnect()
    let out2 = ''
    const again = await sbx.pty.connect(pty.pid, { onData: (d) => { out2 += decoder.decode(d) } })
    assert.equal(again.pid, pty.pid)
    const t1 = Date.now()
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo $FOO\n'))
    await waitFor('the echo after reconnecting', () => out2.includes('bar'), 10_000)
    console.log(`pty: reconnect echo in ${Date.now() - t1} ms`)
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('exit\n'))
    const done = await again.wait()
    assert.equal(done.exitCode, 0)
  })

  test('Template.exists knows the built-in base', async () => {
    assert.equal(await Template.exists('base'), true)
    assert.equal(await Template.exists(`no-such-template-${process.pid}`), false)
  })

  test('maskRequestHost sets the Host a sandbox port sees', async () => {
    const masked = await create({ network: { maskRequestHost: 'custom-host.example.com:${PORT}' } })
    await masked.files.write(
      '/home/user/echo_host.py',
      [
        'import http.server',
        'class H(http.server.BaseHTTPRequestHandler):',
        '    def do_GET(self):',
        '        body = ("Host: " + self.headers.get("Host", "") + "\\nX-Forwarded-Host: " + self.headers.get("X-Forwarded-Host", "")).encode()',
        '        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)',
        'http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()',
      ].join('\n'),
    )
    await masked.commands.run('python3 /home/user/echo_host.py', { background: true })
    const host = masked.getHost(8080)
    let r
    await waitFor('the echo server', async () => {
      r = await viaHost(host, '/')
      return r.status === 200
    }, 30_000)
    assert.match(r.body, /^Host: custom-host\.example\.com:8080$/m)
    assert.match(r.body, new RegExp(`^X-Forwarded-Host: ${host.replace(/\./g, '\\.')}`, 'm'))
  })

  test('a command of a sandbox killed mid-run says so; its port answers 502 as E2B does', async () => {
    const doomed = await create()
    const cmd = await doomed.commands.run('sleep 60', { background: true })
    const host = doomed.getHost(3000)
    await doomed.kill()
    await assert.rejects(cmd.wait(), (err) => {
      assert.match(err.message, /sandbox was killed or reached its end of life/)
      return true
    })
    const r = await viaHost(host, '/')
    assert.equal(r.status, 502)
    const body = JSON.parse(r.body)
    assert.equal(body.message, 'The sandbox was not found')
    assert.equal(body.code, 502)
    assert.ok(doomed.sandboxId.startsWith(body.sandboxId))
  })

  test('a background command started just before a pause finishes after the resume', async () => {
    const p = await create()
    await p.commands.run('sleep 2 && echo done > /home/user/test_long_running.txt', { background: true })
    assert.equal(await p.files.exists('/home/user/test_long_running.txt'), false)
    await p.pause()
    const back = await Sandbox.connect(p.sandboxId)
    const resumed = Date.now()
    await sleep(2000)
    assert.equal(await back.isRunning(), true)
    // E2B's test reads the file 2 s after the connect. Its sleep had most of its 2 s left when
    // the VM stopped (guest time stands still while paused); under TCG the restored VM also
    // translates every code path anew, so the read waits for it, and the time goes to the log.
    let content = ''
    await waitFor('the background command to write the file', async () => {
      content = (await back.files.read('/home/user/test_long_running.txt').catch(() => '')).trim()
      return content === 'done'
    }, 15_000)
    console.log(`pause: background command done ${Date.now() - resumed} ms after the resume`)
  })

  test('filesystem-only pause: the sandbox reboots on resume with its files', async () => {
    const p = await create({ envs: { KEPT: 'env-kept' } })
    const bootBefore = (await p.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout.trim()
    await p.files.write('/home/user/kept.txt', 'kept across a reboot')
    await p.commands.run('sleep 3600', { background: true })
    assert.equal(await p.pause({ keepMemory: false }), true)
    assert.equal(await p.isRunning(), false)
    const back = await Sandbox.connect(p.sandboxId, { timeoutMs: 120_000 })
    assert.equal(back.sandboxId, p.sandboxId)
    const bootAfter = (await back.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout.trim()
    assert.notEqual(bootAfter, bootBefore)
    assert.equal(await back.files.read('/home/user/kept.txt'), 'kept across a reboot')
    const sleeping = await back.commands.list()
    assert.ok(!sleeping.some((c) => c.cmd === 'sleep 3600' || c.args?.includes('3600')), 'processes do not survive')
    // The identity does: its env vars and user are as created.
    assert.equal((await back.commands.run('echo "$KEPT $(whoami)"')).stdout.trim(), 'env-kept user')
  })

  test('auto-pause on timeout, then auto-resume on port traffic', async () => {
    const p = await create({ timeoutMs: 6_000, lifecycle: { onTimeout: 'pause', autoResume: true } })
    const info = await p.getInfo()
    assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume: true })
    await p.files.write('/home/user/www/index.html', 'awake')
    await p.commands.run('cd /home/user/www && python3 -m http.server 8000', { background: true })
    const host = p.getHost(8000)
    await waitFor('the web server', async () => (await viaHost(host, '/')).status === 200, 30_000)
    await waitFor('the timeout to pause it', async () => (await p.getInfo()).state === 'paused', 60_000)
    const r = await viaHost(host, '/')
    assert.equal(r.status, 200, r.body)
    assert.equal(r.body, 'awake')
    assert.equal((await p.getInfo()).state, 'running')
  })
})
