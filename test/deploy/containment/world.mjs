// The world of the containment test, run as root in a fresh network namespace of its own (the
// test starts it under `unshare --net`, so nothing here touches the suite's namespace): trap
// servers on "public" addresses (IPv4 and IPv6, TCP and UDP), loopback services (one on
// 127.0.0.1, ones bound to 0.0.0.0 and ::, which answer on any 127.x address), an upstream only
// the proxy may reach, and the real proxy. It applies the containment it is given (the
// sidecar's iptables script, or the systemd recipe: a private namespace for the server and a
// socket-activated systemd-socket-proxyd bridge), runs the probe as the server's UID, and prints
// one JSON report: what the probe reached and what every listener saw.
import { execFileSync, spawn } from 'node:child_process';
import { connect, createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { createServer as createHttpServer } from 'node:http';
import { readlinkSync } from 'node:fs';
import { once } from 'node:events';

const scenario = JSON.parse(process.argv[2]);
const children = [];
// Children get a clean environment, as systemd or a kubelet would give: nothing of the test
// runner's (its NODE_OPTIONS loaders would run, and write files, as the proxy's and server's users).
const env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
const log = (msg) => process.stderr.write(`world: ${msg}\n`);
// Killed (the test's timeout): take every child along, the proxy and namespace holders included.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    process.exit(1);
  });
}

function sh(argv) {
  execFileSync(argv[0], argv.slice(1), { stdio: ['ignore', 'inherit', 'inherit'], env });
}

function asUser(uid, gid, argv) {
  return ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--pdeathsig=SIGKILL', ...argv];
}

/** Starts a child that dies with the world, however the world dies (even SIGKILL). */
function start(argv, name) {
  const full = argv[0] === 'setpriv' ? argv : ['setpriv', '--pdeathsig=SIGKILL', ...argv];
  const child = spawn(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.push(child);
  child.stderr.setEncoding('utf8');
  child.stdout.setEncoding('utf8');
  child.on('error', (err) => log(`${name}: ${err.message}`));
  return child;
}

/** Resolves once `test` holds for a line the child wrote (stdout or stderr). */
function waitForLine(child, test, what, ms = 30000) {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; saw: ${seen.slice(-2000)}`)), ms);
    const onData = (chunk) => {
      seen += chunk;
      for (const line of seen.split('\n')) {
        if (test(line)) { clearTimeout(timer); resolve(line); return; }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${what}: exited ${code}; saw: ${seen.slice(-2000)}`)); });
  });
}

async function run(argv) {
  const child = start(argv, argv.join(' '));
  let out = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => process.stderr.write(c));
  const [code] = await once(child, 'exit');
  return { code, out };
}

// Listeners that count who reached them.
const seen = {};
async function tcpListener(name, host, port, opts = {}) {
  seen[name] = 0;
  const server = createServer((s) => { seen[name] += 1; s.destroy(); });
  server.listen({ host, port, ...opts });
  await once(server, 'listening');
  return server;
}
async function udpListener(name, host, port) {
  seen[name] = 0;
  const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  socket.on('message', () => { seen[name] += 1; });
  socket.bind(port, host);
  await once(socket, 'listening');
  return socket;
}

const servers = [];
try {
  sh(['ip', 'link', 'set', 'lo', 'up']);
  for (const a of ['93.184.216.34/32', '93.184.216.35/32']) sh(['ip', 'addr', 'add', a, 'dev', 'lo']);
  sh(['ip', '-6', 'addr', 'add', '2606:4700::1111/128', 'dev', 'lo', 'nodad']);

  if (scenario.lockdown) {
    log('applying the lockdown script');
    sh(scenario.lockdown);
  }

  servers.push(
    await tcpListener('trap-v4', '93.184.216.34', 80),
    await tcpListener('trap-v4-443', '93.184.216.34', 443),
    await tcpListener('trap-v6', '2606:4700::1111', 80),
    await tcpListener('loopback-service', '127.0.0.1', 5432),
    await tcpListener('loopback-v6-service', '::1', 5433),
    await tcpListener('any-v4-service', '0.0.0.0', 8080),
    await tcpListener('any-dual-service', '::', 8081, { ipv6Only: false }),
    await udpListener('udp-trap-v4', '93.184.216.34', 53),
    await udpListener('udp-trap-v6', '2606:4700::1111', 53),
    await udpListener('udp-loopback-resolver', '127.0.0.53', 53),
    await udpListener('udp-loopback-v6', '::1', 53),
  );
  seen.upstream = 0;
  const upstream = createHttpServer((req, res) => res.end('upstream'));
  upstream.on('connection', () => { seen.upstream += 1; });
  upstream.listen(80, '93.184.216.35');
  await once(upstream, 'listening');
  servers.push(upstream);

  // The real proxy, as its own user.
  const proxy = start(asUser(scenario.proxy.uid, scenario.proxy.uid, scenario.proxy.argv), 'proxy');
  const listening = new Set();
  await waitForLine(proxy, (line) => {
    try {
      const event = JSON.parse(line);
      if (event.event === 'listening') listening.add(event.listener);
    } catch { /* not JSON */ }
    return listening.has('proxy') && listening.has('admin');
  }, 'the proxy to listen');

  // Exec probes, as the kubelet runs them: inside the proxy container, as its user.
  const probes = [];
  for (const argv of scenario.execProbes ?? []) {
    probes.push({ argv, code: (await run(asUser(scenario.proxy.uid, scenario.proxy.uid, argv))).code });
  }

  // Namespaces as systemd makes them: PrivateNetwork=yes on both the server and the bridge
  // socket (JoinsNamespaceOf=) puts them in one private namespace; on one alone, that one gets
  // a private namespace of its own; on neither, both live in the host's (the world's).
  const privateNamespace = async () => {
    const ownNs = readlinkSync('/proc/self/ns/net');
    const holder = start(['unshare', '--net', 'sleep', '600'], 'namespace holder');
    for (let i = 0; i < 200 && readlinkSync(`/proc/${holder.pid}/ns/net`) === ownNs; i += 1) await new Promise((r) => setTimeout(r, 10));
    const enter = ['nsenter', `--net=/proc/${holder.pid}/ns/net`];
    sh([...enter, 'ip', 'link', 'set', 'lo', 'up']);
    return enter;
  };
  let serverNs = [];
  if (scenario.systemd) {
    const { serverPrivateNetwork, socketPrivateNetwork } = scenario.systemd;
    if (serverPrivateNetwork) serverNs = await privateNamespace();
    const socketNs = socketPrivateNetwork ? (serverPrivateNetwork ? serverNs : await privateNamespace()) : [];
    // The socket unit binds in its namespace; its service, systemd-socket-proxyd, runs in the
    // host's (no PrivateNetwork= of its own) and receives the listening socket.
    const bridge = start([...socketNs, 'systemd-socket-activate', '--listen', scenario.systemd.listenStream, '--',
      'nsenter', `--net=/proc/${process.pid}/ns/net`, ...scenario.systemd.bridgeExecStart], 'bridge');
    await waitForLine(bridge, (line) => line.includes('Listening on'), 'the bridge socket');
  }

  const probeArgv = [...serverNs, ...asUser(scenario.serverUid, scenario.serverUid, [process.execPath, scenario.probeScript, JSON.stringify(scenario.targets), String(scenario.inboundPort ?? 0)])];
  const probe = start(probeArgv, 'probe');
  let out = '';
  probe.stdout.on('data', (c) => (out += c));
  probe.stderr.on('data', (c) => process.stderr.write(c));
  const exited = once(probe, 'exit');
  // A client of the server's own port (as the gateway would be) gets its answer: the server's
  // reply packets are its own UID's, so this needs the rules to pass replies. The client runs as
  // the proxy's UID, which the rules let open connections (off-pod clients come in through
  // INPUT, which the recipe leaves alone; their replies are the same case).
  let inbound;
  if (scenario.inboundPort) {
    await waitForLine(probe, (line) => line === 'serving', 'the server to listen');
    const client = `const s = require('node:net').connect(${scenario.inboundPort}, '127.0.0.1'); let a = '';
      s.setEncoding('utf8'); s.setTimeout(3000, () => s.destroy(new Error('timeout')));
      s.on('data', (c) => (a += c)); s.on('end', () => process.stdout.write(a)); s.on('error', (e) => process.stdout.write('error: ' + e.code));`;
    inbound = (await run(asUser(scenario.proxy.uid, scenario.proxy.uid, [process.execPath, '-e', client]))).out;
  }
  await exited;
  await new Promise((r) => setTimeout(r, 300));
  const lastLine = out.trim().split('\n').pop();
  process.stdout.write(`${JSON.stringify({ probe: JSON.parse(lastLine), seen, execProbes: probes, inbound })}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ error: String(err?.stack ?? err) })}\n`);
} finally {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  // Whatever is still open (a half-closed socket, a listener) must not keep the world alive.
  process.exit(0);
}
