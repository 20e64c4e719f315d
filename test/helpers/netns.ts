/**
 * Guard for tests that name non-loopback addresses: they run only inside the loopback-only
 * network namespace that scripts/test-in-netns.sh creates (npm test), where those addresses
 * live on `lo`. Outside it the test fails instead of sending a packet anywhere.
 */
import { networkInterfaces } from 'node:os';

export const NETNS_ADDRESSES = [
  '169.254.169.254',
  '10.1.2.3',
  '100.100.100.200',
  '93.184.216.34',
  '93.184.216.35',
  'fd00:ec2::254',
  '2606:4700::1111',
];

export function assertLoopbackOnlyNamespace(): void {
  if (process.env.MCP_EGRESS_IN_NETNS !== '1') {
    throw new Error(
      'this test names non-loopback addresses: run it through `npm test` (scripts/test-in-netns.sh), never on the real network',
    );
  }
  const interfaces = networkInterfaces();
  const names = Object.keys(interfaces);
  if (names.some((n) => n !== 'lo')) throw new Error(`unexpected interfaces in the test namespace: ${names.join(', ')}`);
  const present = new Set((interfaces.lo ?? []).map((i) => i.address));
  const missing = NETNS_ADDRESSES.filter((a) => !present.has(a));
  if (missing.length > 0) throw new Error(`the test namespace lacks ${missing.join(', ')} on lo`);
}
