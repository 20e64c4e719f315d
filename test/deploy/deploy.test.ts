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
  t.match(
    unit,
    /^ExecStart=\/usr\/bin\/node \/opt\/mcp-egress-proxy\/dist\/src\/cli\.js serve --config \/etc\/mcp-egress-proxy\/proxy\.yaml$/m,
  );
  const pkg = JSON.parse(await readFile('package.json', 'utf8'));
  t.equal(pkg.bin['mcp-egress-proxy'], 'dist/src/cli.js', 'ExecStart runs the package binary');
});

t.test(
  'the MCP server drop-in and its bridge verify, warning-free, and give the server a private namespace',
  { skip: missing('systemd-analyze') },
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'mep-unit-'));
    await writeFile(join(dir, 'my-mcp-server.service'), '[Unit]\nDescription=An MCP server\n[Service]\nExecStart=/bin/true\n');
    await mkdir(join(dir, 'my-mcp-server.service.d'));
    await copyFile('systemd/mcp-server-egress.conf', join(dir, 'my-mcp-server.service.d', 'egress.conf'));
    for (const f of ['mcp-egress-bridge@.socket', 'mcp-egress-bridge@.service', 'mcp-egress-proxy.service'])
      await copyFile(join('systemd', f), join(dir, f));
    // verify exits 0 on an unknown or misplaced key and only warns: the warnings count too.
    // Verifying the server unit loads the bridge it requires (%N resolved), so a missing or
    // misnamed bridge fails here.
    for (const unit of ['my-mcp-server.service', 'mcp-egress-bridge@my-mcp-server.socket', 'mcp-egress-bridge@my-mcp-server.service']) {
      const { stderr } = await run('systemd-analyze', ['verify', unit], { cwd: dir });
      t.equal(stderr, '', `${unit} verifies without a warning`);
    }
    const { stdout } = await run('systemd-analyze', ['security', '--offline=true', join(dir, 'mcp-egress-bridge@my-mcp-server.service')]);
    const score = Number(/Overall exposure level for .*: ([\d.]+)/.exec(stdout)?.[1]);
    t.ok(score <= 1.5, `the bridge's exposure ${score}`);

    const dropIn = await readFile('systemd/mcp-server-egress.conf', 'utf8');
    t.match(dropIn, /^PrivateNetwork=yes$/m, 'the server gets a namespace with only lo');
    t.match(dropIn, /^JoinsNamespaceOf=mcp-egress-bridge@%N\.socket$/m);
    t.match(dropIn, /^Requires=mcp-egress-bridge@%N\.socket$/m);
    const families = /^RestrictAddressFamilies=(.*)$/m.exec(dropIn)?.[1]?.split(/\s+/) ?? [];
    t.notOk(families.includes('AF_UNIX'), 'no Unix sockets: they cross namespaces (host resolver, D-Bus)');
    t.ok(families.length > 0 && !families.includes('~'), 'an allow-list of families');
    t.match(dropIn, /^IPAddressDeny=any$/m);
    const socket = await readFile('systemd/mcp-egress-bridge@.socket', 'utf8');
    t.match(socket, /^PrivateNetwork=yes$/m, 'the bridge socket binds in a private namespace...');
    t.match(socket, /^JoinsNamespaceOf=%i\.service$/m, "...the server's");
    const bridge = await readFile('systemd/mcp-egress-bridge@.service', 'utf8');
    t.notMatch(bridge, /^PrivateNetwork=/m, 'the bridge service runs in the host namespace, where the proxy is');
    const proxyConfig = parseProxyConfig('config/proxy.yaml', await readFile('config/proxy.yaml', 'utf8')).config;
    const proxyAddress = `${proxyConfig?.listen.host}:${proxyConfig?.listen.port}`;
    t.match(dropIn, new RegExp(`^Environment=HTTPS_PROXY=http://${proxyAddress}$`, 'm'), 'points at the default listen address');
    t.match(socket, new RegExp(`^ListenStream=${proxyAddress}$`, 'm'), 'the bridge listens where HTTPS_PROXY points');
    t.match(bridge, new RegExp(`^ExecStart=/lib/systemd/systemd-socket-proxyd ${proxyAddress}$`, 'm'), 'and carries to the proxy');
    t.match(bridge, new RegExp(`^IPAddressAllow=${proxyConfig?.listen.host}/32$`, 'm'));
    t.not(proxyConfig?.admin.listen?.port, proxyConfig?.listen.port);
  },
);

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
  const exposed = /^EXPOSE (\d+)$/m.exec(dockerfile);
  t.ok(exposed, 'the image exposes the proxy port alone (the admin API is loopback-only)');

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
  const deployments = docs.filter(
    (d) => d.kind === 'Deployment' && d.spec.template.spec.containers.some((c: any) => c.name === 'egress-proxy'),
  );
  t.equal(deployments.length, 2, 'the sidecar and the shared proxy');
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
    t.ok(
      proxyContainer.ports.some((p: any) => p.containerPort === listenPort),
      'the container port is the configured listen port',
    );
    // The admin API binds loopback: a kubelet's httpGet/tcpSocket (node to pod IP) never
    // reaches it, so probes run inside the container (containment.test.ts runs them).
    const adminListen = parseProxyConfig('x', cm.data['proxy.yaml']).config?.admin.listen;
    for (const [probe, path] of [
      ['readinessProbe', '/readyz'],
      ['livenessProbe', '/healthz'],
    ] as const) {
      t.notOk(proxyContainer[probe].httpGet ?? proxyContainer[probe].tcpSocket, `${dep.metadata.name}: ${probe} is not a network probe`);
      t.match(
        proxyContainer[probe].exec.command.join(' '),
        `http://${adminListen?.host}:${adminListen?.port}${path}`,
        `${probe} asks ${path} of the admin listener`,
      );
    }
    t.notOk(
      proxyContainer.ports.some((p: any) => p.containerPort === adminListen?.port),
      'the admin port is not published',
    );
    const mcp = spec.containers.find((c: any) => c.name === 'mcp-server');
    if (mcp) {
      t.equal(
        mcp.env.find((e: any) => e.name === 'HTTPS_PROXY').value,
        `http://127.0.0.1:${listenPort}`,
        'the MCP server points at the sidecar',
      );
      const lockdown = spec.initContainers.find((c: any) => c.name === 'egress-lockdown');
      const script = lockdown.command.join('\n');
      t.match(script, new RegExp(`^\\s*proxy_uid=${uid}$`, 'm'), 'the proxy UID is the image user');
      t.match(script, new RegExp(`^\\s*proxy_port=${listenPort}$`, 'm'), 'the one port the server may reach is the proxy port');
      t.equal(
        parseProxyConfig('x', cm.data['proxy.yaml']).config?.listen.host,
        '127.0.0.1',
        'the proxy listens where the script lets the server go (-d 127.0.0.1)',
      );
      t.match(script, /-o lo -d 127\.0\.0\.1 -p tcp --dport "\$proxy_port" -j ACCEPT/);
      t.not(String(mcp.securityContext.runAsUser), uid, 'the server never runs as the proxy user');
      t.same(mcp.securityContext.capabilities?.drop, ['ALL'], 'the server cannot lift the rules (no NET_ADMIN)');
      t.equal(mcp.securityContext.allowPrivilegeEscalation, false);
    }
  }
  const policies = docs.filter((d) => d.kind === 'NetworkPolicy');
  t.ok(policies.length >= 1, 'the shared-proxy variant contains the MCP servers with a NetworkPolicy');

  // Shared proxy: the servers' one way out is the proxy Service's port, found by address (no DNS).
  const shared = docs.filter((d) => d.file === 'shared-proxy.yaml');
  const service = shared.find((d) => d.kind === 'Service');
  const proxyDeployment = shared.find((d) => d.kind === 'Deployment' && d.metadata.name === service.metadata.name);
  const sharedPort = parseProxyConfig('x', shared.find((d) => d.kind === 'ConfigMap').data['proxy.yaml']).config?.listen.port;
  t.same(
    service.spec.ports.map((p: any) => p.targetPort),
    [sharedPort],
    'the Service carries the proxy port only',
  );
  const serversPolicy = shared.find((d) => d.kind === 'NetworkPolicy' && d.spec.policyTypes.includes('Egress'));
  t.same(
    serversPolicy.spec.egress,
    [
      {
        to: [{ podSelector: { matchLabels: proxyDeployment.spec.template.metadata.labels } }],
        ports: [{ protocol: 'TCP', port: sharedPort }],
      },
    ],
    "servers: the proxy pods' proxy port, nothing else (no DNS)",
  );
  const servers = shared.filter((d) => d.kind === 'Deployment' && d !== proxyDeployment);
  t.ok(servers.length >= 1, 'an example MCP server');
  const serviceHostVar = `$(${service.metadata.name.toUpperCase().replace(/-/g, '_')}_SERVICE_HOST)`;
  for (const server of servers) {
    const labels = server.spec.template.metadata.labels;
    t.ok(
      Object.entries(serversPolicy.spec.podSelector.matchLabels).every(([k, v]) => labels[k] === v),
      `${server.metadata.name} is selected by the servers' NetworkPolicy`,
    );
    for (const c of server.spec.template.spec.containers) {
      const proxyUrl = c.env.find((e: any) => e.name === 'HTTPS_PROXY').value;
      t.match(
        proxyUrl,
        `@${serviceHostVar}:${service.spec.ports[0].port}`,
        `${server.metadata.name} finds the proxy by the Service's address`,
      );
    }
  }

  // The replicas share state in a Redis that only they reach, with the password from one Secret.
  const sharedConfig = parseProxyConfig('x', shared.find((d) => d.kind === 'ConfigMap').data['proxy.yaml']).config;
  t.equal(sharedConfig?.state.store, 'redis', 'two replicas: state.store redis');
  t.ok(proxyDeployment.spec.replicas > 1);
  const redisSet = shared.find((d) => d.kind === 'StatefulSet');
  const redisService = shared.find((d) => d.kind === 'Service' && d.spec.selector.app === redisSet.spec.template.metadata.labels.app);
  t.equal(new URL(sharedConfig?.state.redisUrl ?? '').hostname, redisService.metadata.name, 'redis_url names the Redis Service');
  t.equal(new URL(sharedConfig?.state.redisUrl ?? '').password, '', 'no password in the ConfigMap');
  const secretOf = (c: any, name: string) => c.env.find((e: any) => e.name === name)?.valueFrom?.secretKeyRef;
  const proxySecret = secretOf(proxyDeployment.spec.template.spec.containers[0], 'MCP_EGRESS_REDIS_PASSWORD');
  const redisContainer = redisSet.spec.template.spec.containers[0];
  t.ok(proxySecret, 'the proxy reads the password from a Secret');
  t.same(secretOf(redisContainer, 'REDIS_PASSWORD'), proxySecret, 'the same Secret as the Redis it talks to');
  t.match(redisContainer.args.join(' '), /--requirepass \$\(REDIS_PASSWORD\)/);
  const redisPolicy = shared.find(
    (d) => d.kind === 'NetworkPolicy' && d.spec.podSelector.matchLabels.app === redisSet.spec.template.metadata.labels.app,
  );
  t.same(
    redisPolicy.spec.ingress,
    [{ from: [{ podSelector: { matchLabels: proxyDeployment.spec.template.metadata.labels } }], ports: [{ protocol: 'TCP', port: 6379 }] }],
    'only the proxy pods reach Redis',
  );
});
