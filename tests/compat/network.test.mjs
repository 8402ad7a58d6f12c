// Sandbox networking through the official e2b SDK and moatd's port proxy: a server inside a
// sandbox is reached by `sbx.getHost(port)` (the Host header moatd routes by, as a wildcard DNS
// name pointing at moatd would send it) and by the E2b-Sandbox-Port header; WebSocket upgrades
// pass through; forks serve their own content on the same port; updateNetwork applies a policy.
// Traffic goes only to moatd on loopback. Configured only through E2B_API_KEY, E2B_API_URL and
// E2B_SANDBOX_URL, like e2b_sdk.test.mjs.
import { test, describe, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import crypto from 'node:crypto'
import { Sandbox } from 'e2b'

const api = new URL(process.env.E2B_API_URL)
const created = []

async function create(opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 180_000, ...opts })
  created.push(sbx)
  return sbx
}

// One HTTP GET to moatd with the given headers: {status, body}.
function get(headers, path = '/') {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: api.hostname, port: api.port, path, method: 'GET', headers, timeout: 10_000 },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d) => (body += d))
        res.on('end', () => resolve({ status: res.statusCode, body }))
      },
    )
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', reject)
    req.end()
  })
}

// Retries while the server in the sandbox starts (bounded: 60 tries, 250 ms apart).
async function fetchUntil(headers, want) {
  let last
  for (let i = 0; i < 60; i++) {
    try {
      last = await get(headers)
      if (last.status === 200 && last.body.includes(want)) return last
    } catch (e) {
      last = { status: 0, body: String(e) }
    }
    await new Promise((r) => setTimeout(r, 250))
  }
  return last
}

async function serve(sbx, port, content) {
  const dir = `/tmp/www${port}`
  await sbx.files.write(`${dir}/index.html`, content)
  await sbx.commands.run(`python3 -m http.server ${port} --directory ${dir}`, { background: true })
}

// A WebSocket echo server in the guest's Python standard library (RFC 6455: handshake, one
// unfragmented masked text frame in, the same text back unmasked).
const wsEcho = `
import base64, hashlib, socket
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8765)); s.listen(8)
while True:
    c, _ = s.accept()
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += c.recv(1024)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\\r\\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + acc + b"\\r\\n\\r\\n")
    f = c.recv(2)
    n = f[1] & 127
    mask = c.recv(4)
    data = bytearray(c.recv(n))
    for i in range(n):
        data[i] ^= mask[i % 4]
    c.sendall(bytes([0x81, n]) + bytes(data))
    c.close()
`

// Handshake through moatd with `host`, one masked text frame, the echoed text back.
function wsRoundTrip(host, text) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: api.hostname, port: Number(api.port) })
    const key = crypto.randomBytes(16).toString('base64')
    let buf = Buffer.alloc(0)
    let upgraded = false
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new Error(`websocket timed out; got ${JSON.stringify(buf.toString('latin1'))}`))
    }, 10_000)
    sock.on('connect', () => {
      sock.write(
        `GET /echo HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      )
    })
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.subarray(0, end).toString('latin1')
        if (!head.startsWith('HTTP/1.1 101')) {
          clearTimeout(timer)
          sock.destroy()
          return reject(new Error(`no upgrade: ${head}`))
        }
        const accept = crypto
          .createHash('sha1')
          .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
          .digest('base64')
        assert.match(head, new RegExp(`Sec-WebSocket-Accept: ${accept.replace(/[+/]/g, '\\$&')}`, 'i'))
        upgraded = true
        buf = buf.subarray(end + 4)
        const payload = Buffer.from(text)
        const mask = crypto.randomBytes(4)
        const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))
        sock.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]))
      }
      if (upgraded && buf.length >= 2 && buf.length >= 2 + (buf[1] & 127)) {
        clearTimeout(timer)
        const n = buf[1] & 127
        sock.end()
        resolve({ opcode: buf[0] & 15, text: buf.subarray(2, 2 + n).toString() })
      }
    })
    sock.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
  })
}

describe('sandbox networking through moatd', { concurrency: false }, () => {
  after(async () => {
    for (const sbx of created) await sbx.kill().catch(() => {})
  })

  test('getHost(port) and E2b-Sandbox-Port reach a server in the sandbox', async () => {
    const sbx = await create()
    await serve(sbx, 8000, 'hello-from-8000')
    const host = sbx.getHost(8000)
    assert.match(host, new RegExp(`^8000-${sbx.sandboxId}\\.`))
    const byHost = await fetchUntil({ Host: host }, 'hello-from-8000')
    assert.equal(byHost.status, 200, byHost.body)
    const byHeader = await fetchUntil(
      { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000' },
      'hello-from-8000',
    )
    assert.equal(byHeader.status, 200, byHeader.body)
    // Nothing listens on 8001: moatd answers 502 naming the port; an unknown sandbox is 502 with
    // E2B's JSON.
    const closed = await get({ Host: sbx.getHost(8001) })
    assert.equal(closed.status, 502, closed.body)
    assert.match(closed.body, /8001/)
    const unknown = await get({ Host: `8000-nosuchsandbox0000000.${host.split('.').slice(1).join('.')}` })
    assert.equal(unknown.status, 502, unknown.body)
    assert.equal(JSON.parse(unknown.body).message, 'The sandbox was not found')
  })

  test('a WebSocket echo works through the proxy', async () => {
    const sbx = await create()
    await sbx.files.write('/tmp/ws.py', wsEcho)
    await sbx.commands.run('python3 /tmp/ws.py', { background: true })
    let result
    for (let i = 0; i < 40 && !result; i++) {
      try {
        result = await wsRoundTrip(sbx.getHost(8765), 'ping-through-moat')
      } catch (e) {
        if (i === 39) throw e
        await new Promise((r) => setTimeout(r, 250))
      }
    }
    assert.equal(result.opcode, 1)
    assert.equal(result.text, 'ping-through-moat')
  })

  test('two forks serve their own content on the same port', async () => {
    const parent = await create()
    await serve(parent, 8000, 'parent')
    assert.equal((await fetchUntil({ Host: parent.getHost(8000) }, 'parent')).status, 200)
    const kids = await parent.fork({ count: 2 })
    assert.equal(kids.length, 2)
    for (const k of kids) assert.ok(!(k instanceof Error), String(k))
    created.push(...kids)
    await kids[0].files.write('/tmp/www8000/index.html', 'child-one')
    await kids[1].files.write('/tmp/www8000/index.html', 'child-two')
    const one = await fetchUntil({ Host: kids[0].getHost(8000) }, 'child-one')
    const two = await fetchUntil({ Host: kids[1].getHost(8000) }, 'child-two')
    assert.equal(one.body.trim(), 'child-one')
    assert.equal(two.body.trim(), 'child-two')
    const p = await fetchUntil({ Host: parent.getHost(8000) }, 'parent')
    assert.equal(p.body.trim(), 'parent')
  })

  test('updateNetwork applies a policy; a bad one is refused naming the entry', async () => {
    const sbx = await create({ allowInternetAccess: false })
    await sbx.updateNetwork({ denyOut: ['203.0.113.0/24'], allowInternetAccess: true })
    await assert.rejects(sbx.updateNetwork({ denyOut: ['not-a-cidr'] }), /not-a-cidr/)
    // The port proxy is unaffected by the egress policy (inbound through moatd).
    await serve(sbx, 8000, 'still-served')
    assert.equal((await fetchUntil({ Host: sbx.getHost(8000) }, 'still-served')).status, 200)
  })

  test('allowOut takes domain names (not denyOut); the policy with names is applied', async () => {
    const sbx = await create({
      network: { allowOut: ['Example.com', '*.example.org'], denyOut: ['0.0.0.0/0'] },
    })
    await sbx.updateNetwork({ allowOut: ['api.example.com'], denyOut: ['0.0.0.0/0'] })
    await assert.rejects(
      sbx.updateNetwork({ denyOut: ['example.com'] }),
      /only allowOut takes domain names/,
    )
    await assert.rejects(sbx.updateNetwork({ allowOut: ['exa mple.com'] }), /not a domain name/)
    await assert.rejects(
      Sandbox.create({ timeoutMs: 60_000, network: { allowOut: ['*'] } }),
      /not a domain name/,
    )
    // Still alive and serving after the refusals.
    assert.equal((await sbx.commands.run('echo alive')).stdout.trim(), 'alive')
  })

  test('allowPublicTraffic: false guards the ports with the trafficAccessToken', async () => {
    const sbx = await create({ network: { allowPublicTraffic: false } })
    assert.ok(sbx.trafficAccessToken, 'create returns a trafficAccessToken')
    await serve(sbx, 8000, 'private-page')
    const host = { Host: sbx.getHost(8000) }
    const ok = await fetchUntil(
      { ...host, 'e2b-traffic-access-token': sbx.trafficAccessToken },
      'private-page',
    )
    assert.equal(ok.status, 200)
    const none = await get(host)
    assert.equal(none.status, 403)
    assert.match(none.body, /e2b-traffic-access-token/)
    const wrong = await get({ ...host, 'e2b-traffic-access-token': 'x' + sbx.trafficAccessToken })
    assert.equal(wrong.status, 403)
    const info = await sbx.getInfo()
    assert.equal(info.network?.allowPublicTraffic, false)
    // A public sandbox has no token, and its ports need none.
    const open = await create()
    assert.equal(open.trafficAccessToken, undefined)
  })
})
