// The "MCP server" of the containment test: run as the server's UID inside its containment, it
// tries every way out it is given and prints what happened as one JSON line. Plain JavaScript,
// so that it runs as another user without the test's TypeScript loader.
import { connect, createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import { isIPv6 } from 'node:net';

const targets = JSON.parse(process.argv[2]);
const servePort = Number(process.argv[3] ?? 0);

// A server also answers its own clients (the MCP gateway calling it): with a port given, listen
// on it, say so, and answer one client before trying the ways out.
if (servePort) {
  await new Promise((resolve) => {
    const server = createServer((socket) => { socket.end('mcp-server answers\n'); server.close(); resolve(); });
    // Nobody came (the client was refused): go on, the test reports it.
    setTimeout(() => { server.close(); resolve(); }, 5000).unref();
    server.listen(servePort, '0.0.0.0', () => process.stdout.write('serving\n'));
  });
}

function tryTcp({ host, port }) {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 2000 });
    socket.once('connect', () => { socket.destroy(); resolve({ connected: true }); });
    socket.once('timeout', () => { socket.destroy(); resolve({ connected: false, error: 'timeout' }); });
    socket.once('error', (err) => resolve({ connected: false, error: err.code ?? String(err) }));
  });
}

function tryUdp({ host, port }) {
  return new Promise((resolve) => {
    const socket = createSocket(isIPv6(host) ? 'udp6' : 'udp4');
    let error;
    socket.on('error', (err) => { error = err.code ?? String(err); });
    // Twice: a REJECT's ICMP answer surfaces as an error on the next send.
    socket.send('exfil.example.', port, host, () => {
      socket.send('exfil.example.', port, host, () => setTimeout(() => { socket.close(); resolve({ sent: true, error }); }, 200));
    });
  });
}

function tryViaProxy({ host, port, url }) {
  return new Promise((resolve) => {
    const req = request({ host, port, path: url, headers: { host: new URL(url).host }, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.once('timeout', () => req.destroy(new Error('timeout')));
    req.once('error', (err) => resolve({ error: err.code ?? String(err) }));
    req.end();
  });
}

const results = [];
for (const target of targets) {
  const run = target.proto === 'udp' ? tryUdp : target.proto === 'via-proxy' ? tryViaProxy : tryTcp;
  results.push({ ...target, ...(await run(target)) });
}
process.stdout.write(`${JSON.stringify({ uid: process.getuid(), results })}\n`);
