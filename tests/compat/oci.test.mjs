// Templates from OCI images (issue 15) through moatd, with the official e2b SDK as a user writes
// them: Template().fromImage('127.0.0.1:PORT/…') against a docker-registry this test starts on
// loopback (storage in its temp dir), holding an image it made itself with umoci — busybox-static
// as the whole userland, an env var and a workdir in its config, no bash. Nothing comes from the
// internet. The same approach as tests/support/oci_test_image.h (the C++ tests).
// Configured only through E2B_API_KEY and E2B_API_URL (run.sh sets them).
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { BuildError, Sandbox, Template } from 'e2b'
import { sleep } from './support.mjs'

const run = process.pid.toString(36)
const tools = ['/usr/bin/skopeo', '/usr/bin/umoci', '/usr/bin/docker-registry', '/bin/busybox']
const missing = tools.find((t) => !fs.existsSync(t))

// The private registry's login. docker-registry's htpasswd takes bcrypt hashes only, which Node
// cannot make; this one (of creds.password, 5 rounds) was made once with libcrypt:
//   perl -e 'print crypt("oci-test-pw", q($2b$05$abcdefghijklmnopqrstuu))'
const creds = { username: 'alice', password: 'oci-test-pw' }
const passwordHash = '$2b$05$abcdefghijklmnopqrstuuWTXx/CGIpoXQ/ZGTakW85G5Ekyg5b6W'

// Every registry this file started: stopped in `after`, and killed on any exit of this process.
const registries = []
process.on('exit', () => {
  for (const r of registries) if (r.child.exitCode === null) r.child.kill('SIGKILL')
})

async function freeLoopbackPort() {
  const srv = net.createServer()
  await new Promise((resolve, reject) => srv.on('error', reject).listen(0, '127.0.0.1', resolve))
  const { port } = srv.address()
  await new Promise((resolve) => srv.close(resolve))
  return port
}

// docker-registry on a free loopback port, storage under `dir`; with `htpasswd` every request
// needs that login (over plain HTTP). Answers once GET /v2/ gives 200 (or 401 with a login).
async function startRegistry(dir, htpasswd) {
  fs.mkdirSync(path.join(dir, 'storage'), { recursive: true })
  let auth = ''
  if (htpasswd) {
    fs.writeFileSync(path.join(dir, 'htpasswd'), htpasswd, { mode: 0o600 })
    auth = `auth:\n  htpasswd:\n    realm: moat-test\n    path: ${dir}/htpasswd\n`
  }
  const config = path.join(dir, 'registry.yml')
  // Another process may take the port between the probe and the registry's bind: retry.
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freeLoopbackPort()
    fs.writeFileSync(
      config,
      'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n' +
        `storage:\n  filesystem:\n    rootdirectory: ${dir}/storage\n` +
        `${auth}http:\n  addr: 127.0.0.1:${port}\n`,
    )
    const log = fs.openSync(path.join(dir, 'registry.log'), 'a')
    const child = spawn('/usr/bin/docker-registry', ['serve', config], {
      stdio: ['ignore', log, log],
      env: { PATH: '/usr/bin:/bin' },
    })
    fs.closeSync(log)
    const registry = { child, port, host: `127.0.0.1:${port}` }
    registries.push(registry)
    const exited = new Promise((resolve) => child.on('exit', resolve))
    const end = Date.now() + 20_000
    while (Date.now() < end && child.exitCode === null) {
      const status = await fetch(`http://${registry.host}/v2/`).then((r) => r.status, () => 0)
      if (status === 200 || status === 401) return registry
      await sleep(50)
    }
    await stopRegistry(registry)
    await exited
  }
  const log = fs.readFileSync(path.join(dir, 'registry.log'), 'utf8')
  throw new Error(`docker-registry did not answer:\n${log.slice(-2000)}`)
}

async function stopRegistry(registry) {
  if (registry.child.exitCode !== null || registry.child.signalCode !== null) return
  const exited = new Promise((resolve) => registry.child.on('exit', resolve))
  registry.child.kill('SIGTERM')
  const timer = setTimeout(() => registry.child.kill('SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

function tool(argv, cwd) {
  execFileSync(argv[0], argv.slice(1), {
    cwd,
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', HOME: cwd },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
}

// The test image in the OCI layout `layout`:v1: /bin/busybox with every applet it has (sh among
// them; busybox has no bash) as symlinks in /bin, /srv/app, and a config with MOAT_IMAGE, PATH
// and the workdir /srv/app.
function makeBusyboxImage(work, layout) {
  const image = `${layout}:v1`
  tool(['umoci', 'init', '--layout', layout], work)
  tool(['umoci', 'new', '--image', image], work)
  const bundle = path.join(work, 'bundle')
  tool(['umoci', 'unpack', '--image', image, bundle], work)
  const rootfs = path.join(bundle, 'rootfs')
  for (const d of ['bin', 'etc', 'srv/app']) fs.mkdirSync(path.join(rootfs, d), { recursive: true })
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'))
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755)
  const applets = execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n')
  for (const a of applets.filter((a) => a && a !== 'busybox' && a !== 'bash')) {
    fs.symlinkSync('busybox', path.join(rootfs, 'bin', a))
  }
  fs.writeFileSync(path.join(rootfs, 'etc/os-release'), 'ID=moat-busybox\n')
  tool(['umoci', 'repack', '--image', image, bundle], work)
  tool(['umoci', 'config', '--image', image, '--config.env', `MOAT_IMAGE=busybox-${run}`,
    '--config.env', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', '--config.workingdir', '/srv/app'], work)
  fs.rmSync(bundle, { recursive: true, force: true })
  return image
}

function push(image, dest, home, login) {
  const argv = ['skopeo', '--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false']
  if (login) argv.push('--dest-creds', `${login.username}:${login.password}`)
  tool([...argv, `oci:${image}`, `docker://${dest}`], home)
}

// The sandboxes and templates this file made: removed in `after`.
const created = []
const templates = []

// Template.build() as a user calls it; the log's lines as "level message".
async function build(template, name) {
  const logs = []
  try {
    await Template.build(template, name, { cpuCount: 1, memoryMB: 512, onBuildLogs: (e) => logs.push(e) })
  } finally {
    templates.push(name)
  }
  return logs.map((l) => `${l.level} ${l.message}`).join('\n')
}

const suite = { concurrency: false, skip: missing && `${missing} is not installed` }
describe('templates from OCI images (issue 15)', suite, () => {
  let dir
  let pub
  let priv
  let image

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-oci-compat-'))
    const work = path.join(dir, 'make')
    fs.mkdirSync(work)
    image = makeBusyboxImage(work, path.join(work, 'layout'))
    pub = await startRegistry(path.join(dir, 'public'))
    push(image, `${pub.host}/test/busybox:v1`, dir)
    priv = await startRegistry(path.join(dir, 'private'), `${creds.username}:${passwordHash}\n`)
    push(image, `${priv.host}/team/busybox:v1`, dir, creds)
  })

  after(async () => {
    for (const s of created) await s.kill().catch(() => {})
    for (const t of templates) {
      await fetch(`${process.env.E2B_API_URL}/templates/${t}`, {
        method: 'DELETE',
        headers: { 'X-API-Key': process.env.E2B_API_KEY },
      }).catch(() => {})
    }
    for (const r of registries) await stopRegistry(r)
    if (dir) fs.rmSync(dir, { recursive: true, force: true })
  })

  const name = `oci-${run}`

  test('an image from a registry is pulled, built on and run, with /bin/sh for lack of bash', async () => {
    const ref = `${pub.host}/test/busybox:v1`
    const t = Template()
      .fromImage(ref)
      .runCmd('echo from-oci > /root-marker', { user: 'root' })
      // The default user `user` (made by the conversion), in the image's workdir, with its env.
      .runCmd('echo "$MOAT_IMAGE in $(pwd) as $(id -un)" > /home/user/build-env')
    const text = await build(t, name)
    assert.match(text, new RegExp(`Pulling image ${ref}`))
    assert.match(text, /pulled .* sha256:[0-9a-f]{64}/)

    const sbx = await Sandbox.create(name, { timeoutMs: 300_000 })
    created.push(sbx)
    // The SDK runs `/bin/bash -l -c …`: the guest falls back to /bin/sh.
    const r = await sbx.commands.run('test -e /bin/bash || echo no-bash; cat /etc/os-release; cat /root-marker')
    assert.equal(r.stdout, 'no-bash\nID=moat-busybox\nfrom-oci\n')
    assert.equal(await sbx.files.read('/home/user/build-env'), `busybox-${run} in /srv/app as user\n`)
    // The image's workdir is the sandbox's (no WORKDIR step came after it); the user is E2B's.
    assert.equal((await sbx.commands.run('pwd; id -un')).stdout, '/srv/app\nuser\n')
    assert.equal((await sbx.commands.run('id -un', { user: 'root' })).stdout, 'root\n')
  })

  test('a private registry: the build pulls with the credentials given, and fails without them', async () => {
    const ref = `${priv.host}/team/busybox:v1`
    await assert.rejects(build(Template().fromImage(ref).runCmd('true'), `oci-anon-${run}`), (e) => {
      assert.ok(e instanceof BuildError, `BuildError, got ${e}`)
      assert.match(e.message, new RegExp(`pulling image ${ref}: .*(unauthorized|authentication required)`))
      return true
    })
    const wrong = `wrong-pw-${run}`
    await assert.rejects(
      build(Template().fromImage(ref, { username: creds.username, password: wrong }).runCmd('true'),
        `oci-wrong-${run}`),
      (e) => {
        assert.ok(e instanceof BuildError, `BuildError, got ${e}`)
        assert.match(e.message, new RegExp(`pulling image ${ref}: `))
        assert.ok(!e.message.includes(wrong), 'the error does not show the password')
        return true
      },
    )
    // The same image (one digest) under another name: its conversion and its steps are reused.
    const t = Template()
      .fromImage(ref, creds)
      .runCmd('echo from-oci > /root-marker', { user: 'root' })
      .runCmd('echo "$MOAT_IMAGE in $(pwd) as $(id -un)" > /home/user/build-env')
    const text = await build(t, `oci-private-${run}`)
    assert.match(text, /already converted/)
    assert.match(text, /CACHED \[builder 2\/2\]/)
    assert.ok(!text.includes(creds.password), 'the build log does not show the password')
    const sbx = await Sandbox.create(`oci-private-${run}`, { timeoutMs: 300_000 })
    created.push(sbx)
    assert.equal((await sbx.commands.run('cat /root-marker')).stdout, 'from-oci\n')
  })

  test('a tag the registry does not have fails the build naming the image', async () => {
    const ref = `${pub.host}/test/busybox:nope`
    await assert.rejects(build(Template().fromImage(ref).runCmd('true'), `oci-nope-${run}`), (e) => {
      assert.ok(e instanceof BuildError, `BuildError, got ${e}`)
      assert.match(e.message, new RegExp(`pulling image ${ref}: .*manifest unknown`))
      return true
    })
  })
  test('a registry on the host\'s own network is refused unless the operator allowed it', async () => {
    // run.sh allows 127.0.0.1 (--insecure-registry); the link-local metadata address is not.
    const ref = '169.254.169.254/latest/meta-data:v1'
    await assert.rejects(build(Template().fromImage(ref).runCmd('true'), `oci-local-${run}`), (e) => {
      assert.ok(e instanceof BuildError, `BuildError, got ${e}`)
      assert.match(e.message, /--insecure-registry 169\.254\.169\.254/)
      return true
    })
  })
})
