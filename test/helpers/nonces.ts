import type { UdpDatagram } from '../../src/testbed/traffic';

/**
 * What a capture says about nonce reuse: the data datagrams (type 4, whole header) it holds, the
 * (destination, receiver index, counter) triples seen more than once, and the receiver indices
 * used (per destination). A repeat means a counter was used twice under one key.
 */
export function nonceRepeats(datagrams: readonly UdpDatagram[]): { data: number; repeats: string[]; indices: number } {
  const seen = new Set<string>();
  const indices = new Set<string>();
  const repeats: string[] = [];
  let data = 0;
  for (const d of datagrams) {
    if (d.payload.length < 16 || d.payload[0] !== 4) continue;
    data++;
    const id = `${d.dst}:${d.dstPort} ${d.payload.readUInt32LE(4)} ${d.payload.readBigUInt64LE(8)}`;
    if (seen.has(id)) repeats.push(id);
    seen.add(id);
    indices.add(`${d.dst} ${d.payload.readUInt32LE(4)}`);
  }
  return { data, repeats, indices: indices.size };
}

/**
 * The agent's rekey test knobs for agents started from now on: rekey every second, both sides on
 * their own schedule (CLADNET_REKEY_AFTER_MS=1000, CLADNET_REKEY_BOTH=1). Returns what puts the old
 * values back.
 */
export function rekeyEverySecond(): () => void {
  const saved = { CLADNET_REKEY_AFTER_MS: process.env.CLADNET_REKEY_AFTER_MS, CLADNET_REKEY_BOTH: process.env.CLADNET_REKEY_BOTH };
  process.env.CLADNET_REKEY_AFTER_MS = '1000';
  process.env.CLADNET_REKEY_BOTH = '1';
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}
