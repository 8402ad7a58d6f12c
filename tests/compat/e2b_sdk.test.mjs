// The official e2b SDK (pinned in package.json) against a real moatd, configured only through
// E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL. run.sh starts moatd and runs this file.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import zlib from 'node:zlib'
import {
  AuthenticationError,
  CommandExitError,
  FileType,
  FilesystemEventType,
  NotFoundError,
  RateLimitError,
  Sandbox,
  SandboxNotFoundError,
} from 'e2b'
import { waitFor } from './support.mjs'

for (const name of ['E2B_API_KEY', 'E2B_API_URL', 'E2B_SANDBOX_URL']) {
  assert.ok(process.env[name], `${name} must be set (run tests/compat/run.sh)`)
}

// Unique per run, so that a metadata filter finds only this run's sandboxes.
const run = `r${process.pid}${Date.now()}`

// moat's own routes (/keys), which the SDK does not know: plain fetch with an API key.
async function moatApi(method, path, key, body) {
  const res = await fetch(`${process.env.E2B_API_URL}${path}`, {
    method,
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  return { status: res.status, body: res.status === 204 ? null : await res.json() }
}

// A raw GET (node:http never decompresses), to see what is on the wire.
function rawGet(url, headers) {
  return new Promise((resolve, reject) => {
    http.get(url, { headers }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    }).on('error', reject)
  })
}

describe('e2b SDK against moatd', { concurrency: false }, () => {
  let plain // Sandbox.create() with every default
  let tagged // Sandbox.create() with metadata and envs

  before(async () => {
    ;[plain, tagged] = await Promise.all([
      Sandbox.create(),
      Sandbox.create({ metadata: { suite: 'compat', run }, envs: { GREETING: 'hello from create' } }),
    ])
  })

  after(async () => {
    await Promise.allSettled([plain?.kill(), tagged?.kill()])
  })

  test('Sandbox.create() with defaults returns a running base sandbox', async () => {
    assert.match(plain.sandboxId, /^[a-z0-9]{20}$/)
    assert.equal(await plain.isRunning(), true)
    const info = await plain.getInfo()
    assert.equal(info.sandboxId, plain.sandboxId)
    assert.equal(info.templateId, 'base')
    assert.equal(info.state, 'running')
    const ttl = info.endAt.getTime() - info.startedAt.getTime()
    assert.ok(ttl > 295000 && ttl < 305000, `default timeout is 300 s, got ${ttl} ms`)
  })

  test('Sandbox.create() with metadata and envs keeps both', async () => {
    const info = await tagged.getInfo()
    assert.deepEqual(info.metadata, { suite: 'compat', run })
    const r = await tagged.commands.run('echo "$GREETING"')
    assert.equal(r.stdout, 'hello from create\n')
  })

  test('the base image carries what E2B\'s default base does (git, curl, sudo, pip, venv, npm)', async () => {
    const tools = await plain.commands.run(
      'git --version && curl --version | head -1 && wget --version | head -1 && jq --version && ' +
        'unzip -v | head -1 && ps --version && ip -V && python3 -m pip --version && node --version && ' +
        'npm --version && sudo -n id -un && python --version',
      { timeoutMs: 120000 },
    )
    assert.equal(tools.exitCode, 0)
    assert.match(tools.stdout, /^git version 2\./m)
    assert.match(tools.stdout, /^pip \d+/m)
    assert.match(tools.stdout, /^v18\./m)
    assert.match(tools.stdout, /^root$/m, 'user sudoes without a password')
    assert.match(tools.stdout, /^Python 3\./m, '`python` is python3, as on E2B')
    // A venv, and a git round trip against a bare repository (no network).
    const git = await plain.commands.run(
      'set -e; python3 -m venv /tmp/venv && /tmp/venv/bin/python -c "import sys; print(sys.prefix)"; ' +
        'git init -q --bare /tmp/origin.git && git clone -q /tmp/origin.git /tmp/work 2>/dev/null; ' +
        'cd /tmp/work && echo hi > a && git add a && ' +
        'git -c user.name=t -c user.email=t@e commit -qm one && git push -q origin HEAD 2>/dev/null && ' +
        'git --git-dir=/tmp/origin.git log --format=%s',
      { timeoutMs: 120000 },
    )
    assert.equal(git.stdout, '/tmp/venv\none\n')
  })

  test('commands.run streams stdout and stderr to the callbacks', async () => {
    const out = []
    const err = []
    const r = await plain.commands.run('echo one; echo two >&2; echo three', {
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    })
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'one\nthree\n')
    assert.equal(r.stderr, 'two\n')
    assert.equal(out.join(''), 'one\nthree\n')
    assert.equal(err.join(''), 'two\n')
  })

  test('a non-zero exit raises CommandExitError with the exit code and output', async () => {
    await assert.rejects(plain.commands.run('echo bad >&2; exit 3'), (e) => {
      assert.ok(e instanceof CommandExitError, `got ${e}`)
      assert.equal(e.exitCode, 3)
      assert.equal(e.stderr, 'bad\n')
      return true
    })
  })

  test('commands.run passes envs, cwd and user', async () => {
    const env = await plain.commands.run('echo "$A-$B"', { envs: { A: '1', B: 'two words' } })
    assert.equal(env.stdout, '1-two words\n')
    const cwd = await plain.commands.run('pwd', { cwd: '/tmp' })
    assert.equal(cwd.stdout, '/tmp\n')
    const home = await plain.commands.run('pwd; id -un')
    assert.equal(home.stdout, '/home/user\nuser\n')
    const root = await plain.commands.run('id -un', { user: 'root' })
    assert.equal(root.stdout, 'root\n')
  })

  test('background commands can be waited for and killed', async () => {
    const h = await plain.commands.run('sleep 1; echo done', { background: true })
    assert.ok(h.pid > 0)
    const r = await h.wait()
    assert.equal(r.stdout, 'done\n')

    const long = await plain.commands.run('sleep 600', { background: true, timeoutMs: 0 })
    const listed = await plain.commands.list()
    assert.ok(listed.some((p) => p.pid === long.pid), 'the background process is listed')
    assert.equal(await long.kill(), true)
    await assert.rejects(long.wait(), (e) => e instanceof CommandExitError)
    assert.equal(await plain.commands.kill(long.pid), false, 'killing it again finds nothing')
  })

  test('sendStdin feeds a running command', async () => {
    const h = await plain.commands.run('read a; read b; echo "got $a and $b"', {
      background: true,
      stdin: true,
    })
    await plain.commands.sendStdin(h.pid, 'x\n')
    await plain.commands.sendStdin(h.pid, 'y\n')
    const r = await h.wait()
    assert.equal(r.stdout, 'got x and y\n')
  })

  test('files.write and files.read: text, bytes, several files', async () => {
    const w = await plain.files.write('/home/user/d/a.txt', 'data')
    assert.equal(w.path, '/home/user/d/a.txt')
    assert.equal(w.name, 'a.txt')
    assert.equal(await plain.files.read('d/a.txt'), 'data', 'relative to /home/user')

    const bytes = new Uint8Array(256).map((_, i) => i)
    await plain.files.write('/home/user/d/bin', bytes)
    const back = await plain.files.read('/home/user/d/bin', { format: 'bytes' })
    assert.deepEqual(Array.from(back), Array.from(bytes))

    const many = await plain.files.write([
      { path: '/home/user/m/one.txt', data: '1' },
      { path: '/home/user/m/two.txt', data: '22' },
    ])
    assert.deepEqual(many.map((e) => e.path).sort(), ['/home/user/m/one.txt', '/home/user/m/two.txt'])
    assert.equal(await plain.files.read('/home/user/m/two.txt'), '22')
    const owner = await plain.commands.run('stat -c %U /home/user/m/one.txt')
    assert.equal(owner.stdout, 'user\n')
  })

  test('files.read with gzip: compressed on the wire, the same text read back', async () => {
    const text = 'compressible text '.repeat(4000)
    await plain.files.write('/home/user/gz.txt', text)
    assert.equal(await plain.files.read('/home/user/gz.txt', { gzip: true }), text)

    const { body: info } = await moatApi('GET', `/sandboxes/${plain.sandboxId}`, process.env.E2B_API_KEY)
    const url = `${process.env.E2B_SANDBOX_URL}/files?path=${encodeURIComponent('/home/user/gz.txt')}`
    const headers = {
      'E2b-Sandbox-Id': plain.sandboxId,
      'E2b-Sandbox-Port': '49983',
      'X-Access-Token': info.envdAccessToken,
    }
    const gz = await rawGet(url, { ...headers, 'Accept-Encoding': 'gzip, deflate' })
    assert.equal(gz.status, 200)
    assert.equal(gz.headers['content-encoding'], 'gzip')
    assert.ok(gz.body.length < text.length / 10, `compressed to ${gz.body.length} bytes`)
    assert.equal(zlib.gunzipSync(gz.body).toString(), text)
    const plainBody = await rawGet(url, { ...headers, 'Accept-Encoding': 'identity' })
    assert.equal(plainBody.headers['content-encoding'], undefined)
    assert.equal(plainBody.body.toString(), text)
  })

  test('files.list, exists, makeDir, rename and remove', async () => {
    await plain.files.write('/home/user/l/f.txt', 'x')
    assert.equal(await plain.files.makeDir('/home/user/l/sub'), true)
    assert.equal(await plain.files.makeDir('/home/user/l/sub'), false, 'already exists')
    const entries = await plain.files.list('/home/user/l')
    assert.deepEqual(entries.map((e) => e.name).sort(), ['f.txt', 'sub'])
    const file = entries.find((e) => e.name === 'f.txt')
    assert.equal(file.type, FileType.FILE)
    assert.equal(file.size, 1)
    assert.equal(entries.find((e) => e.name === 'sub').type, FileType.DIR)

    assert.equal(await plain.files.exists('/home/user/l/f.txt'), true)
    assert.equal(await plain.files.exists('/nope'), false)

    const moved = await plain.files.rename('/home/user/l/f.txt', '/home/user/l/g.txt')
    assert.equal(moved.name, 'g.txt')
    assert.equal(await plain.files.exists('/home/user/l/f.txt'), false)
    assert.equal(await plain.files.read('/home/user/l/g.txt'), 'x')

    await plain.files.remove('/home/user/l')
    assert.equal(await plain.files.exists('/home/user/l'), false)
    await plain.files.remove('/home/user/l')  // a missing path is not an error
    await assert.rejects(plain.files.read('/home/user/l/g.txt'), (e) => e instanceof NotFoundError)
  })

  test('files.watchDir reports changes', async () => {
    await plain.files.makeDir('/home/user/w')
    const events = []
    const handle = await plain.files.watchDir('/home/user/w', (e) => events.push(e))
    try {
      await plain.files.write('/home/user/w/new.txt', 'hi')
      await waitFor('a create event for new.txt', () =>
        events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.CREATE) ||
        events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.RENAME))
    } finally {
      await handle.stop()
    }
  })

  test('file operations run as the requesting user, as in E2B', async () => {
    // As the default user the kernel's checks apply: no /etc/shadow, no writes into /etc.
    await assert.rejects(plain.files.read('/etc/shadow'))
    await assert.rejects(plain.files.write('/etc/moat-compat-x', 'by user'))
    assert.equal((await plain.commands.run('ls -a /etc | grep -c moat-compat || true')).stdout, '0\n')
    // As root they succeed.
    assert.match(await plain.files.read('/etc/shadow', { user: 'root' }), /^root:/)
    await plain.files.write('/etc/moat-compat-x', 'by root', { user: 'root' })
    assert.equal((await plain.commands.run('stat -c %U /etc/moat-compat-x')).stdout, 'root\n')
    // What the user writes, parents included, belongs to the user.
    await plain.files.write('/home/user/owned/sub/f.txt', 'mine')
    const owners = await plain.commands.run(
      'stat -c %U /home/user/owned /home/user/owned/sub /home/user/owned/sub/f.txt')
    assert.equal(owners.stdout, 'user\nuser\nuser\n')
    // Code in the sandbox plants ~/data -> /etc: the user's next write "into home" is refused.
    await plain.commands.run('ln -sfn /etc /home/user/data')
    await assert.rejects(plain.files.write('/home/user/data/moat-compat-x', 'pwned'))
    assert.equal(await plain.files.read('/etc/moat-compat-x', { user: 'root' }), 'by root')
    await plain.files.remove('/etc/moat-compat-x', { user: 'root' })
    await plain.files.remove('/home/user/data')
  })

  test('reading a FIFO fails at once and the sandbox keeps answering', async () => {
    await plain.commands.run('rm -f /home/user/fifo && mkfifo /home/user/fifo')
    const started = Date.now()
    await assert.rejects(plain.files.read('/home/user/fifo'))
    assert.ok(Date.now() - started < 5000, 'the read did not wait for a writer')
    assert.equal((await plain.commands.run('echo alive')).stdout, 'alive\n')
    await plain.files.remove('/home/user/fifo')
  })

  test('Sandbox.list filters by metadata', async () => {
    const paginator = Sandbox.list({ query: { metadata: { suite: 'compat', run } } })
    const items = await paginator.nextItems()
    assert.deepEqual(items.map((s) => s.sandboxId), [tagged.sandboxId])
    assert.equal(items[0].state, 'running')
    assert.deepEqual(items[0].metadata, { suite: 'compat', run })
    assert.equal(paginator.hasNext, false)
  })

  test('Sandbox.connect reaches the same sandbox', async () => {
    await tagged.files.write('/home/user/marker', 'still here')
    const again = await Sandbox.connect(tagged.sandboxId)
    assert.equal(again.sandboxId, tagged.sandboxId)
    assert.equal(await again.files.read('/home/user/marker'), 'still here')
    const r = await again.commands.run('echo "$GREETING"')
    assert.equal(r.stdout, 'hello from create\n')
  })

  test('getMetrics reports what the sandbox costs the host', async () => {
    // A busy loop first, so that the CPU share since the previous sample is not zero.
    await tagged.commands.run('timeout 1 sh -c "while :; do :; done"; true')
    const metrics = await tagged.getMetrics()
    assert.equal(metrics.length, 1)
    const m = metrics[0]
    assert.ok(m.timestamp instanceof Date && Math.abs(m.timestamp.getTime() - Date.now()) < 60000)
    assert.equal(m.cpuCount, 1)
    assert.ok(m.cpuUsedPct > 0 && m.cpuUsedPct <= 100, `cpuUsedPct ${m.cpuUsedPct}`)
    assert.ok(m.memUsed > 1 << 20 && m.memUsed < m.memTotal, `memUsed ${m.memUsed}`)
    assert.ok(m.memCache <= m.memUsed, 'memCache is the file-backed part of memUsed')
    assert.ok(m.diskUsed > 0 && m.diskUsed < m.diskTotal, `diskUsed ${m.diskUsed}`)
    // A range that ends before now has no sample; a bad range is refused.
    assert.deepEqual(await tagged.getMetrics({ start: new Date(1000), end: new Date(2000) }), [])
    await assert.rejects(
      tagged.getMetrics({ start: new Date(5000), end: new Date(1000) }),
      (e) => /start is after end/.test(e.message),
    )
  })

  test('setTimeout ends the sandbox when it expires', async () => {
    const short = await Sandbox.create({ timeoutMs: 120000 })
    try {
      await short.setTimeout(2000)
      const info = await short.getInfo()
      assert.ok(info.endAt.getTime() - Date.now() < 3000, 'the end time moved closer')
      await waitFor('the sandbox to expire', async () => !(await short.isRunning()))
      await assert.rejects(Sandbox.getInfo(short.sandboxId), (e) => e instanceof NotFoundError)
    } finally {
      await Sandbox.kill(short.sandboxId)
    }
  })

  test('pause then connect: files and a running process survive', async () => {
    const sbx = await Sandbox.create()
    try {
      await sbx.files.write('/home/user/kept.txt', 'before pause')
      const bg = await sbx.commands.run('sleep 600', { background: true })
      assert.equal(await sbx.pause(), true)
      assert.equal(await sbx.pause(), false, 'a second pause reports already paused')
      const info = await Sandbox.getInfo(sbx.sandboxId)
      assert.equal(info.state, 'paused')
      const back = await Sandbox.connect(sbx.sandboxId)
      assert.equal(await back.files.read('/home/user/kept.txt'), 'before pause')
      const procs = await back.commands.list()
      assert.ok(procs.some((p) => p.pid === bg.pid), 'the background process survived the pause')
      assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'running')
    } finally {
      await Sandbox.kill(sbx.sandboxId)
    }
  })

  test('fork gives a child with the parent files, isolated afterwards', async () => {
    const parent = await Sandbox.create()
    let children = []
    try {
      await parent.files.write('/tmp/at-fork.txt', 'parent')
      children = await parent.fork()
      assert.equal(children.length, 1)
      const child = children[0]
      assert.ok(!(child instanceof Error), String(child))
      assert.notEqual(child.sandboxId, parent.sandboxId)
      assert.equal(await child.files.read('/tmp/at-fork.txt'), 'parent')
      await child.files.write('/tmp/at-fork.txt', 'child')
      assert.equal(await parent.files.read('/tmp/at-fork.txt'), 'parent')
    } finally {
      for (const c of children) if (!(c instanceof Error)) await c.kill()
      await parent.kill()
    }
  })

  test('snapshots: createSnapshot, listSnapshots, create from one, deleteSnapshot', async () => {
    const src = await Sandbox.create()
    const made = []
    const children = []
    try {
      await src.files.write('/home/user/snap.txt', 'before snapshot')
      const named = await src.createSnapshot({ name: `compat-${run}` })
      made.push(named.snapshotId)
      assert.match(named.snapshotId, /^snap[a-z0-9]{16}$/)
      assert.deepEqual(named.names, [`compat-${run}`])
      await src.files.write('/home/user/snap.txt', 'after snapshot')
      const unnamed = await Sandbox.createSnapshot(src.sandboxId)
      made.push(unnamed.snapshotId)
      assert.deepEqual(unnamed.names, [])
      assert.equal(await src.isRunning(), true, 'the sandbox keeps running')

      // Newest first, one per page.
      const paginator = src.listSnapshots({ limit: 1 })
      const first = await paginator.nextItems()
      assert.deepEqual(first.map((x) => x.snapshotId), [unnamed.snapshotId])
      assert.equal(paginator.hasNext, true)
      const second = await paginator.nextItems()
      assert.deepEqual(second.map((x) => x.snapshotId), [named.snapshotId])
      assert.deepEqual(second[0].names, [`compat-${run}`])
      assert.equal(paginator.hasNext, false)
      const byName = await Sandbox.listSnapshots({ name: `compat-${run}` }).nextItems()
      assert.deepEqual(byName.map((x) => x.snapshotId), [named.snapshotId])

      const fromId = await Sandbox.create(named.snapshotId)
      children.push(fromId)
      assert.notEqual(fromId.sandboxId, src.sandboxId)
      assert.equal(await fromId.files.read('/home/user/snap.txt'), 'before snapshot')
      assert.equal((await fromId.getInfo()).templateId, named.snapshotId)
      const fromName = await Sandbox.create(`compat-${run}`)
      children.push(fromName)
      assert.equal(await fromName.files.read('/home/user/snap.txt'), 'before snapshot')
      const fromUnnamed = await Sandbox.create(unnamed.snapshotId)
      children.push(fromUnnamed)
      assert.equal(await fromUnnamed.files.read('/home/user/snap.txt'), 'after snapshot')

      assert.equal(await Sandbox.deleteSnapshot(named.snapshotId), true)
      assert.equal(await Sandbox.deleteSnapshot(named.snapshotId), false, 'already deleted')
      assert.equal(await fromId.files.read('/home/user/snap.txt'), 'before snapshot',
        'a sandbox made from a deleted snapshot runs on')
      const left = await Sandbox.listSnapshots({ sandboxId: src.sandboxId }).nextItems()
      assert.deepEqual(left.map((x) => x.snapshotId), [unnamed.snapshotId])
      await assert.rejects(Sandbox.create(named.snapshotId), (e) => e.statusCode === 404)
      await assert.rejects(Sandbox.createSnapshot('nosuchsandbox'),
        (e) => e instanceof SandboxNotFoundError)
    } finally {
      for (const c of children) await c.kill()
      for (const id of made) await Sandbox.deleteSnapshot(id)
      await src.kill()
    }
  })

  test('API keys and snapshots belong to a team: another team sees none of them', async () => {
    const admin = process.env.E2B_API_KEY
    const created = await moatApi('POST', '/keys', admin, { name: 'compat', team: `team-${run}` })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    const other = created.body.key
    assert.match(other, /^e2b_[0-9a-f]{40}$/)
    const snap = await tagged.createSnapshot()
    try {
      assert.deepEqual(await Sandbox.listSnapshots({ apiKey: other }).nextItems(), [])
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, { apiKey: other }), false)
      await assert.rejects(Sandbox.create(snap.snapshotId, { apiKey: other }),
        (e) => e.statusCode === 404)
      await assert.rejects(Sandbox.createSnapshot(tagged.sandboxId, { apiKey: other }),
        (e) => e instanceof SandboxNotFoundError)
      assert.ok((await Sandbox.listSnapshots().nextItems()).some((x) => x.snapshotId === snap.snapshotId),
        'still there for its own team')

      // The new team manages its own keys and nobody else's.
      const own = await moatApi('GET', '/keys', other)
      assert.equal(own.status, 200)
      assert.deepEqual(own.body.map((k) => k.id), [created.body.id])
      assert.ok(!JSON.stringify(own.body).includes(other), 'a listed key has no value')
      assert.equal((await moatApi('POST', '/keys', other, { name: 'x', team: 'evil' })).status, 403)
      const adminKeys = await moatApi('GET', '/keys', admin)
      const adminKeyId = adminKeys.body[0].id
      assert.equal((await moatApi('DELETE', `/keys/${adminKeyId}`, other)).status, 404)
      const lastAdmin = await moatApi('DELETE', `/keys/${adminKeyId}`, admin)
      assert.equal(lastAdmin.status, 409, 'the last admin key cannot be revoked')
      assert.equal(lastAdmin.body.code, 409)

      // A team's last key cannot be revoked, even by an admin: it would orphan the team.
      const lastOfTeam = await moatApi('DELETE', `/keys/${created.body.id}`, admin)
      assert.equal(lastOfTeam.status, 409, JSON.stringify(lastOfTeam.body))
      const spare = await moatApi('POST', '/keys', admin, { name: 'spare', teamID: created.body.teamID })
      assert.equal(spare.status, 201, JSON.stringify(spare.body))

      // A revoked key is refused at once.
      assert.equal((await moatApi('DELETE', `/keys/${created.body.id}`, admin)).status, 204)
      await assert.rejects(Sandbox.list({ apiKey: other }).nextItems(),
        (e) => e instanceof AuthenticationError)
    } finally {
      await Sandbox.deleteSnapshot(snap.snapshotId)
    }
  })

  test('a team over its sandbox quota gets 429 from Sandbox.create', async () => {
    const admin = process.env.E2B_API_KEY
    const created = await moatApi('POST', '/keys', admin, { name: 'quota', team: `quota-${run}` })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    const key = created.body.key
    const quotas = `/teams/${created.body.teamID}/quotas`
    const set = await moatApi('PUT', quotas, admin, { maxSandboxes: 1 })
    assert.equal(set.status, 200, JSON.stringify(set.body))
    assert.equal((await moatApi('PUT', quotas, key, { maxSandboxes: 50 })).status, 403,
      'a team cannot raise its own quota')
    const first = await Sandbox.create({ apiKey: key })
    try {
      await assert.rejects(Sandbox.create({ apiKey: key }), (e) => {
        assert.ok(e instanceof RateLimitError, `${e.name}: ${e.message}`)
        assert.match(e.message, /maxSandboxes/)
        assert.match(e.message, /limit is 1/)
        return true
      })
      // Paused sandboxes do not count; resuming one needs room again.
      assert.equal(await first.pause(), true)
      const second = await Sandbox.create({ apiKey: key })
      await assert.rejects(Sandbox.connect(first.sandboxId, { apiKey: key }),
        (e) => e instanceof RateLimitError)
      await second.kill()
      const usage = await moatApi('GET', quotas, key)
      assert.equal(usage.status, 200)
      assert.equal(usage.body.usage.sandboxes, 0)
      assert.ok(usage.body.usage.createsLastMinute >= 2)
      // Metadata past the size quota (64 KiB by default) is refused the same way.
      await assert.rejects(
        Sandbox.create({ apiKey: key, metadata: { blob: 'x'.repeat(70 * 1024) } }),
        (e) => e instanceof RateLimitError && /maxMetadataBytes/.test(e.message))
    } finally {
      await Sandbox.kill(first.sandboxId, { apiKey: key })
    }
    // /metrics needs a key, as Prometheus sends it.
    assert.equal((await fetch(`${process.env.E2B_API_URL}/metrics`)).status, 401)
    const scraped = await fetch(`${process.env.E2B_API_URL}/metrics`,
      { headers: { Authorization: `Bearer ${key}` } })
    assert.equal(scraped.status, 200)
    assert.match(await scraped.text(), /moat_sandboxes\{state="running"\}/)
  })

  test('kill ends the sandbox; a second kill returns false', async () => {
    assert.equal(await plain.kill(), true)
    assert.equal(await Sandbox.kill(plain.sandboxId), false)
    assert.equal(await plain.isRunning(), false)
    await assert.rejects(Sandbox.connect(plain.sandboxId), (e) => e instanceof NotFoundError)
  })

  test('a wrong API key raises AuthenticationError', async () => {
    await assert.rejects(Sandbox.create({ apiKey: 'moat_wrong' }), (e) => e instanceof AuthenticationError)
    await assert.rejects(
      Sandbox.list({ apiKey: 'moat_wrong' }).nextItems(),
      (e) => e instanceof AuthenticationError,
    )
    await assert.rejects(Sandbox.kill(tagged.sandboxId, { apiKey: 'moat_wrong' }),
      (e) => e instanceof AuthenticationError)
    assert.equal(await tagged.isRunning(), true, 'a rejected kill leaves the sandbox running')
  })
})
