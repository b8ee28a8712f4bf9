/**
 * Micro-benchmark of the network policy's per-packet cost (src/dataplane/policy.ts), no kernel:
 * a 100-rule policy compiled for host `db` over 100 peers, every rule naming db (the worst case:
 * rules for other hosts are dropped at compile time), the matching rule the last one.
 *
 *   established  a packet of a flow already in the flow table (the steady state of a connection)
 *   new-flow     a new flow each packet (source port moves), allowed by rule 100 after scanning
 *                99 others, then entered in the table (which fills and evicts)
 *   denied       a packet no rule allows: all 100 rules scanned, counted as default deny
 *   track        the send side: a packet from the TUN records its reply's 5-tuple
 *
 * Without a policy (or with an open one) inbound.ts reads one boolean and the send side nothing.
 *
 * ns per packet, the fastest of TRIALS timed trials after a warm-up. Run:
 *   npx tsc -p bench/tsconfig.json && node dist-bench/bench/policy.js
 */
import { compilePolicy, signPolicy, type PolicyRule } from '../src/control/policy';
import { loadEd25519 } from '../src/crypto/sign';
import { counterSlots, PacketFilter } from '../src/dataplane/policy';
import { systemClock } from '../src/dataplane/peer';
import { formatIpv4, parseIpv4 } from '../src/util/ipv4';

const TRIALS = 7;
const N = 200_000;
const DB = parseIpv4('100.64.0.3')!;
const WEB = parseIpv4('100.64.1.10')!;

function tcp(src: number, dst: number, sp: number, dp: number): Buffer {
  const b = Buffer.alloc(1400);
  b[0] = 0x45;
  b.writeUInt16BE(b.length, 2);
  b[8] = 64;
  b[9] = 6;
  b.writeUInt32BE(src, 12);
  b.writeUInt32BE(dst, 16);
  b.writeUInt16BE(sp, 20);
  b.writeUInt16BE(dp, 22);
  b[33] = 0x10;
  return b;
}

function time(fn: (i: number) => void): number {
  for (let i = 0; i < N; i++) fn(i); // warm-up
  let best = Infinity;
  for (let t = 0; t < TRIALS; t++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) fn(i);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / N);
  }
  return best;
}

async function main(): Promise<void> {
  const ed = await loadEd25519();
  const key = ed.generate();
  const rules: PolicyRule[] = [];
  for (let k = 0; k < 99; k++) rules.push({ from: k % 2 ? 'group:web' : 'host:web-0', to: 'group:db', proto: 'tcp', ports: String(1000 + k) });
  rules.push({ from: 'group:web', to: 'group:db', proto: 'tcp', ports: '5432' });
  const policy = signPolicy(ed, key.secretKey, { network: 'bench', serial: 1, rules });
  const peers = Array.from({ length: 100 }, (_, i) => ({ name: `web-${i}`, overlayIp: formatIpv4(WEB + i), groups: ['web'] }));
  const compiled = compilePolicy(policy, { name: 'db', overlayIp: formatIpv4(DB), groups: ['db'] }, peers);
  const f = new PacketFilter(systemClock);
  f.set(compiled, new Float64Array(counterSlots(rules.length)));
  f.tick();

  const est = tcp(WEB, DB, 40000, 5432);
  if (!f.allows(est, 0, est.length)) throw new Error('the established flow is not allowed');
  const fresh = tcp(WEB, DB, 0, 5432);
  const denied = tcp(WEB, DB, 40000, 22);
  if (f.allows(denied, 0, denied.length)) throw new Error('TCP 22 is allowed');
  const out = tcp(DB, WEB, 5432, 40000);
  let sink = 0;
  const results: Record<string, number> = {
    established: time(() => {
      if (f.allows(est, 0, est.length)) sink++;
    }),
    'new-flow': time((i) => {
      // another flow every packet: 64,000 source ports, twice the table's capacity, so a port
      // comes round again only after its entry was evicted
      fresh.writeUInt16BE(1024 + (i % 64000), 20);
      if (f.allows(fresh, 0, fresh.length)) sink++;
    }),
    denied: time(() => {
      if (!f.allows(denied, 0, denied.length)) sink++;
    }),
    track: time(() => f.track(out, 0, out.length)),
  };
  const allowed = N * (TRIALS + 1) * 2;
  if (sink !== allowed + N * (TRIALS + 1)) throw new Error(`unexpected verdicts: ${sink} counted, ${allowed + N * (TRIALS + 1)} expected`);
  const line = Object.entries(results)
    .map(([k, v]) => `${k} ${v.toFixed(1)} ns`)
    .join(', ');
  console.log(`policy: 100 rules for this host over 100 peers, ns per packet (best of ${TRIALS} x ${N}): ${line}; flow evictions ${f.evictions}`);
  console.log(JSON.stringify({ rules: rules.length, peers: peers.length, trials: TRIALS, packetsPerTrial: N, nsPerPacket: results }));
}

void main();
