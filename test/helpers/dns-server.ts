/** A UDP DNS server on loopback for tests (dgram + dns-packet): answers from a table or a function, records every question. */
import { createSocket } from 'node:dgram';
import dnsPacket from 'dns-packet';

export interface Answer {
  A?: string[];
  AAAA?: string[];
  ttl?: number;
  rcode?: 'NXDOMAIN' | 'SERVFAIL';
  /** Never answer (the resolver times out). */
  silent?: boolean;
}

export type Handler = (name: string, type: 'A' | 'AAAA', count: number) => Answer | undefined;

export interface TestDnsServer {
  readonly address: string;
  readonly queries: Array<{ name: string; type: string }>;
  queriesFor(name: string): Array<{ name: string; type: string }>;
  close(): Promise<void>;
}

export async function startDnsServer(handler: Handler | Record<string, Answer>): Promise<TestDnsServer> {
  const socket = createSocket('udp4');
  const queries: Array<{ name: string; type: string }> = [];
  const counts = new Map<string, number>();
  const answer: Handler = typeof handler === 'function' ? handler : (name) => handler[name];
  socket.on('message', (msg, rinfo) => {
    let query: dnsPacket.Packet;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const question = query.questions?.[0];
    if (!question) return;
    const name = question.name.toLowerCase();
    const type = question.type as 'A' | 'AAAA';
    queries.push({ name, type });
    const key = `${name}/${type}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    const a = answer(name, type, counts.get(key) as number);
    if (a?.silent) return;
    const records = (type === 'A' ? a?.A : type === 'AAAA' ? a?.AAAA : undefined) ?? [];
    const flags = a?.rcode === 'NXDOMAIN' || a === undefined ? 3 : a.rcode === 'SERVFAIL' ? 2 : 0;
    const response = dnsPacket.encode({
      id: query.id,
      type: 'response',
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | flags,
      questions: query.questions,
      answers: flags === 0 ? records.map((data) => ({ name: question.name, type, class: 'IN', ttl: a?.ttl ?? 60, data })) : [],
    });
    socket.send(response, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
  const { port } = socket.address();
  return {
    address: `127.0.0.1:${port}`,
    queries,
    queriesFor: (name) => queries.filter((q) => q.name === name),
    close: () => new Promise((resolve) => socket.close(() => resolve())),
  };
}
