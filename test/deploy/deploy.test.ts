/**
 * Deployment files: the systemd unit and drop-in verify and score, and the Dockerfile and the
 * Kubernetes manifests agree with each other and with the config (no Docker engine runs here,
 * so this checks what can be checked without one).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, writeFile, mkdir, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { missing } from '../helpers/requires.js';
import { parseAllDocuments } from 'yaml';
import { parseProxyConfig } from '../../src/config/proxy-config.js';
import { parsePolicy } from '../../src/policy/schema.js';

const run = promisify(execFile);

t.test('systemd unit: verifies, and systemd-analyze security rates it 1.5 or lower', { skip: missing('systemd-analyze') }, async (t) => {
  await run('systemd-analyze', ['verify', 'systemd/mcp-egress-proxy.service']);
  const { stdout } = await run('systemd-analyze', ['security', '--offline=true', 'systemd/mcp-egress-proxy.service']);
  const score = Number(/Overall exposure level for mcp-egress-proxy\.service: ([\d.]+)/.exec(stdout)?.[1]);
  t.ok(score <= 1.5, `exposure ${score}`);
  const unit = await readFile('systemd/mcp-egress-proxy.service', 'utf8');
  t.match(unit, /^Type=(simple|notify)$/m);
  t.match(unit, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
  t.match(unit, /^DynamicUser=yes$/m);
  t.match(unit, /^ExecStart=\/usr\/bin\/node \/opt\/mcp-egress-proxy\/dist\/src\/cli\.js serve --config \/etc\/mcp-egress-proxy\/proxy\.yaml$/m);
  const pkg = JSON.parse(await readFile('package.json', 'utf8'));
  t.equal(pkg.bin['mcp-egress-proxy'], 'dist/src/cli.js', 'ExecStart runs the package binary');
});

t.test('the MCP server drop-in verifies and allows only the proxy', { skip: missing('systemd-analyze') }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mep-unit-'));
  await writeFile(join(dir, 'my-mcp-server.service'), '[Unit]\nDescription=An MCP server\n[Service]\nExecStart=/bin/true\n');
  await mkdir(join(dir, 'my-mcp-server.service.d'));
  await copyFile('systemd/mcp-server-egress.conf', join(dir, 'my-mcp-server.service.d', 'egress.conf'));
  await run('systemd-analyze', ['verify', join(dir, 'my-mcp-server.service')]);
  const dropIn = await readFile('systemd/mcp-server-egress.conf', 'utf8');
  t.match(dropIn, /^IPAddressDeny=any$/m);
  t.match(dropIn, /^IPAddressAllow=127\.0\.0\.1\/32$/m);
  const proxyConfig = parseProxyConfig('config/proxy.yaml', await readFile('config/proxy.yaml', 'utf8')).config;
  t.match(dropIn, new RegExp(`^Environment=HTTPS_PROXY=http://${proxyConfig?.listen.host}:${proxyConfig?.listen.port}$`, 'm'), 'points at the default listen address');
});

t.test('Dockerfile and Kubernetes manifests agree', async (t) => {
  const dockerfile = await readFile('Dockerfile', 'utf8');
  const uid = /^USER (\d+):(\d+)$/m.exec(dockerfile)?.[1];
  t.ok(uid, 'a non-root USER');
  t.not(uid, '0');
  t.match(dockerfile, /^FROM .* AS build$/m, 'multi-stage');
  t.match(dockerfile, /npm prune --omit=dev/, 'no dev dependencies in the final image');
  t.match(dockerfile, /^HEALTHCHECK /m);
  const configDir = /MCP_EGRESS_CONFIG=(\S+)\/proxy\.yaml/.exec(dockerfile)?.[1];
  t.equal(configDir, '/etc/mcp-egress-proxy');
  const healthPort = /127\.0\.0\.1:(\d+)\/healthz/.exec(dockerfile)?.[1];
  const exposed = /^EXPOSE (\d+) (\d+)$/m.exec(dockerfile);

  const files = (await readdir('config/kubernetes')).filter((f) => f.endsWith('.yaml'));
  t.ok(files.length >= 3);
  const docs: any[] = [];
  for (const file of files) {
    for (const doc of parseAllDocuments(await readFile(join('config/kubernetes', file), 'utf8'))) {
      t.same(doc.errors, [], `${file} parses`);
      docs.push({ file, ...doc.toJS() });
    }
  }
  const configMaps = docs.filter((d) => d.kind === 'ConfigMap');
  for (const cm of configMaps) {
    const proxy = parseProxyConfig(`${cm.file}:proxy.yaml`, cm.data['proxy.yaml']);
    t.ok(proxy.config, `${cm.metadata.name}: proxy.yaml is valid`);
    const policy = parsePolicy(`${cm.file}:policy.yaml`, cm.data['policy.yaml']);
    t.ok(policy.spec, `${cm.metadata.name}: the mounted policy passes check`);
    t.equal(proxy.config?.admin.listen?.port, Number(healthPort), 'the admin port is the one the HEALTHCHECK probes');
    t.equal(String(proxy.config?.listen.port), exposed?.[1], 'the proxy port is exposed');
  }
  const deployments = docs.filter((d) => d.kind === 'Deployment');
  for (const dep of deployments) {
    const spec = dep.spec.template.spec;
    const proxyContainer = spec.containers.find((c: any) => c.name === 'egress-proxy');
    t.ok(proxyContainer, `${dep.metadata.name} runs the proxy`);
    t.equal(String(proxyContainer.securityContext.runAsUser), uid, 'runs as the image user');
    t.equal(proxyContainer.securityContext.readOnlyRootFilesystem, true);
    const mount = proxyContainer.volumeMounts.find((m: any) => m.name === 'egress-config');
    t.equal(mount.mountPath, configDir, 'mounts the config where the image looks');
    const cmName = spec.volumes.find((v: any) => v.name === 'egress-config').configMap.name;
    const cm = configMaps.find((c) => c.metadata.name === cmName);
    t.ok(cm, `mounts an existing ConfigMap (${cmName})`);
    const listenPort = parseProxyConfig('x', cm.data['proxy.yaml']).config?.listen.port;
    t.ok(proxyContainer.ports.some((p: any) => p.containerPort === listenPort), 'the container port is the configured listen port');
    t.equal(proxyContainer.readinessProbe.httpGet.path, '/readyz');
    const mcp = spec.containers.find((c: any) => c.name === 'mcp-server');
    if (mcp) {
      t.equal(mcp.env.find((e: any) => e.name === 'HTTPS_PROXY').value, `http://127.0.0.1:${listenPort}`, 'the MCP server points at the sidecar');
      const lockdown = spec.initContainers.find((c: any) => c.name === 'egress-lockdown');
      t.match(lockdown.command.join('\n'), new RegExp(`--uid-owner ${uid} -j ACCEPT`), 'only the proxy UID may leave the pod');
      t.match(lockdown.command.join('\n'), /-j REJECT/);
    }
  }
  const policies = docs.filter((d) => d.kind === 'NetworkPolicy');
  t.ok(policies.length >= 1, 'the shared-proxy variant contains the MCP servers with a NetworkPolicy');
});
