#include "support/test_internet.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "common/fs.h"
#include "net/net_tools.h"

namespace moat::test_support {
namespace {

using std::chrono::seconds;

Result<std::string> Sh(const std::string& cmd) {
  return net::RunTool({"sh", "-c", cmd}, {}, -1, seconds(20));
}

// The test's resolver. A datagram that is not a DNS query gets "answer:" + itself back (the
// probe's check that a slot forwards port 53 at all); DNS A queries are answered from a fixed
// zone (TTL 5) so that guests and moatd resolve the test's names: <x>.wild.test and the bare
// wild.test differ on purpose (a wildcard must not match its own base name). Unknown names are
// NXDOMAIN; other types of a known name get an empty NOERROR answer.
constexpr char kDnsServer[] = R"(import socket, struct
ZONE = {"allowed.test": "198.51.100.1", "other.test": "203.0.113.1",
        "spoof.test": "203.0.113.1", "wild.test": "203.0.113.1"}
def lookup(name):
    if name in ZONE:
        return ZONE[name]
    return "198.51.100.1" if name.endswith(".wild.test") else None
def reply(d):
    ident, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", d[:12])
    if flags & 0xf800 or qd != 1 or an or ns:
        return None
    labels, i = [], 12
    while d[i]:
        if d[i] & 0xc0:
            return None
        labels.append(d[i + 1:i + 1 + d[i]].decode("ascii").lower())
        i += 1 + d[i]
    qtype, qclass = struct.unpack(">HH", d[i + 1:i + 5])
    question = d[12:i + 5]
    addr = lookup(".".join(labels))
    rcode, answers = (3, b"") if addr is None else (0, b"")
    if addr is not None and qtype == 1 and qclass == 1:
        answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(addr)
    # QR, AA, RD copied from the query, RA.
    flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    return struct.pack(">HHHHHH", ident, flags, 1, 1 if answers else 0, 0, 0) + question + answers
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.1", 53))
while True:
    d, a = s.recvfrom(512)
    try:
        r = reply(d)
    except Exception:
        r = None
    s.sendto(r if r is not None else b"answer:" + d, a)
)";

// A web server that answers every GET with one body whatever the Host, on one address and port;
// with a certificate and key, over TLS. The handshake is left to the connection's own thread
// (do_handshake_on_connect=False), so a client that stalls mid-handshake cannot block accept.
constexpr char kWebServer[] = R"(import http.server, ssl, sys
addr, port, body = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode() + b"\n"
class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((addr, port), Handler)
if len(sys.argv) > 5:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                    do_handshake_on_connect=False)
server.serve_forever()
)";

}  // namespace

const char kProbeScript[] =
    R"(import json, socket, ssl, sys, urllib.error, urllib.parse, urllib.request
def as_name(target):
    # "host:<name>@http://ip/" or "sni:<name>@https://ip/": connect to the URL's address, send
    # <name> as the Host header and, over TLS, as the server name.
    name, url = target.split(":", 1)[1].split("@", 1)
    p = urllib.parse.urlsplit(url)
    tls = p.scheme == "https"
    s = socket.create_connection((p.hostname, p.port or (443 if tls else 80)), timeout=3)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname=name)
    with s:
        s.sendall(("GET " + (p.path or "/") + " HTTP/1.0\r\nHost: " + name +
                   "\r\nConnection: close\r\n\r\n").encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data:
        return "err:connection closed without a response"
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace").split(" ", 2)
    body = body[:64].decode(errors="replace").strip()
    if len(status) < 2 or not status[1].startswith("2"):
        return "err:HTTP Error " + ": ".join(status[1:]) + ": " + body
    return "ok:" + body
out = {}
for u in sys.argv[1:]:
    try:
        if u.startswith("dns:"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.connect((u[4:], 53))
            s.send(b"query")
            out[u] = "ok:" + s.recv(64).decode(errors="replace")
            continue
        if u.startswith(("host:", "sni:")):
            out[u] = as_name(u)
            continue
        with urllib.request.urlopen(u, timeout=3,
                                    context=ssl._create_unverified_context()) as r:
            out[u] = "ok:" + r.read(64).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        out[u] = "err:" + str(e) + ": " + e.read(64).decode(errors="replace").strip()
    except Exception as e:
        out[u] = "err:" + str(getattr(e, "reason", e))
print(json.dumps(out))
)";

bool Denied(const std::string& result) {
  return result.rfind("err:", 0) == 0 && result.find("No route to host") != std::string::npos;
}

std::string MoatNetworkObjects() {
  auto left =
      Sh("echo $(ip netns list | grep -c moat) $(ip link | grep -c moat) "
         "$(nft list tables | grep -c moat)");
  return left.ok() ? left->substr(0, left->find('\n')) : "?";
}

int SlotObjects(const net::Ipv4Cidr& pool) {
  uint32_t a = pool.address.value;
  std::string dotted = std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
                       std::to_string((a >> 8) & 255) + ".";
  char hex[16];
  std::snprintf(hex, sizeof hex, "%06x", a >> 8);
  auto r = Sh("echo $(( $(ip netns list | grep -c 'moat-" + dotted +
              "') + $(ip -o link | grep -c 'moat" + hex + "') ))");
  return r.ok() ? std::atoi(r->c_str()) : -1;
}

Result<std::unique_ptr<TestInternet>> TestInternet::Start(const std::string& dir,
                                                          const net::NetConfig& config) {
  std::unique_ptr<TestInternet> t(new TestInternet());
  t->tag_ = std::to_string(::getpid());
  t->ns_ = "moat-test-inet-" + t->tag_;
  t->link_ = "moatin" + std::to_string(::getpid() % 10000000) + "h";
  t->dir_ = dir;
  t->stopped_ = false;
  // The safety net: whatever the code under test lets out of a slot of this pool goes only to
  // the test's internet ranges or other slots.
  std::string pool = config.pool.ToString();
  std::string guard = "table ip moat_test_guard_" + t->tag_ +
                      " {\n chain forward {\n  type filter hook forward priority -300; policy "
                      "accept;\n  iifgroup " +
                      std::to_string(config.link_group) + " ip saddr " + pool +
                      " ip daddr != { 198.51.100.0/24, 203.0.113.0/24, " + pool +
                      " } drop\n }\n}\n";
  MOAT_RETURN_IF_ERROR(net::RunTool({"nft", "-f", "-"}, guard).status().Annotate("guard table"));
  std::string setup =
      "ip netns add " + t->ns_ + " && ip link add " + t->link_ +
      " type veth peer name eth0 netns " + t->ns_ + " && ip addr add " + kHostAddress + "/24 dev " +
      t->link_ + " && ip link set " + t->link_ + " up && echo 1 > /proc/sys/net/ipv4/conf/" +
      t->link_ + "/forwarding && ip route add 203.0.113.0/24 via 198.51.100.1 dev " + t->link_ +
      " && ip -n " + t->ns_ + " link set lo up && ip -n " + t->ns_ +
      " addr add 198.51.100.1/24 dev eth0 && ip -n " + t->ns_ +
      " addr add 203.0.113.1/24 dev eth0 && ip -n " + t->ns_ + " link set eth0 up && mkdir -p " +
      dir + "/www " + dir + "/hostwww && echo internet > " + dir +
      "/www/index.html && echo host > " + dir + "/hostwww/index.html";
  MOAT_RETURN_IF_ERROR(Sh(setup).status().Annotate("internet namespace"));
  auto serve = [&](std::vector<std::string> argv) -> Status {
    SpawnOptions o;
    o.argv = std::move(argv);
    MOAT_ASSIGN_OR_RETURN(ChildProcess c, ChildProcess::Spawn(o));
    t->servers_.push_back(std::move(c));
    return Status::Ok();
  };
  for (const char* port : {"8000", "3000"}) {
    MOAT_RETURN_IF_ERROR(serve({"ip", "netns", "exec", t->ns_, "python3", "-m", "http.server", port,
                                "--bind", "0.0.0.0", "--directory", dir + "/www"}));
  }
  MOAT_RETURN_IF_ERROR(serve({"ip", "netns", "exec", t->ns_, "python3", "-c", kDnsServer}));
  // Ports 80 and 443, where a slot sends what its policy allows only by name. The certificate
  // is self-signed: what a test checks is which server answered, not who it is.
  std::string cert = dir + "/tls/cert.pem", key = dir + "/tls/key.pem";
  MOAT_RETURN_IF_ERROR(
      Sh("mkdir -p " + dir +
         "/tls && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test "
         "-keyout " +
         key + " -out " + cert + " 2>&1")
          .status()
          .Annotate("test certificate"));
  struct Web {
    const char* address;
    const char* port;
    const char* body;
    bool tls;
  };
  for (const Web& w :
       {Web{"198.51.100.1", "80", "internet80", false}, Web{"203.0.113.1", "80", "other80", false},
        Web{"198.51.100.1", "443", "tls-internet", true},
        Web{"203.0.113.1", "443", "tls-other", true}}) {
    std::vector<std::string> argv = {"ip", "netns",    "exec",    t->ns_, "python3",
                                     "-c", kWebServer, w.address, w.port, w.body};
    if (w.tls) argv.insert(argv.end(), {cert, key});
    MOAT_RETURN_IF_ERROR(serve(std::move(argv)));
  }
  MOAT_RETURN_IF_ERROR(serve({"python3", "-m", "http.server", "8001", "--bind", kHostAddress,
                              "--directory", dir + "/hostwww"}));
  // Up when every server answers the probe run from the host (which reaches both addresses
  // directly), the resolver included.
  std::vector<std::string> probe = {"python3",
                                    "-c",
                                    kProbeScript,
                                    t->HostUrl(),
                                    kInternet,
                                    kControlPlane,
                                    "http://198.51.100.1/",
                                    "http://203.0.113.1/",
                                    "https://198.51.100.1/",
                                    "https://203.0.113.1/",
                                    std::string("dns:") + kResolver};
  std::string last;
  for (int i = 0;; ++i) {
    auto r = net::RunTool(probe, {}, -1, seconds(30));
    last = r.ok() ? *r : r.status().ToString();
    if (r.ok() && last.find("\"err:") == std::string::npos) break;
    if (i == 100) return Unavailable("test internet: servers did not start: " + last);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return t;
}

std::string TestInternet::HostUrl() const {
  return std::string("http://") + kHostAddress + ":8001/";
}

void TestInternet::Stop() {
  if (stopped_) return;
  stopped_ = true;
  servers_.clear();  // kills the servers
  (void)Sh("ip link del " + link_ + " 2>/dev/null; ip netns del " + ns_ +
           " 2>/dev/null; nft delete table ip moat_test_guard_" + tag_ + " 2>/dev/null; rm -rf " +
           dir_ + "/www " + dir_ + "/hostwww " + dir_ + "/tls; true");
}

TestInternet::~TestInternet() {
  Stop();
}

}  // namespace moat::test_support
