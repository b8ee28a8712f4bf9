import { describe, expect, it } from 'vitest';
import { emptyMetrics, METRICS, type Metrics } from '../../bench/metrics';
import { OptionsError, parseOptions } from '../../bench/options';
import { parsePingRtts, parseSnmpUdp, parseSsSkmem, udpDrops } from '../../bench/probes';
import { pairOf, summarisePairs } from '../../bench/policy-pairs';
import { computeRatios, formatReport, targetLines, type BenchResults, type ImplResult } from '../../bench/report';
import { blockOrder, formatPairedLatency, summarisePaired } from '../../bench/latency-paired';
import { defaultWgNewPath, parseWgVersion } from '../../bench/tunnels/wireguard';
import { IMPLEMENTATIONS } from '../../bench/tunnels/types';

/** The bench's pure parts (issue 14): anchors, drops, options, ratios and the printed table. */

const SNMP = (inErrors: number, rcvbuf: number, sndbuf: number) =>
  'Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n' +
  `Udp: 1000 0 ${inErrors} 900 ${rcvbuf} ${sndbuf} 0 0 0\n`;

function impl(status: ImplResult['status'], m: Partial<Metrics>, extra: Partial<ImplResult> = {}): ImplResult {
  const median = { ...emptyMetrics(), ...m };
  const round = { metrics: median, detail: { socketBuffers: { a: { rcvbuf: 8 << 20, sndbuf: 8 << 20 }, b: null } }, errors: [] };
  return { status, version: '1', notes: { cipher: 'x' }, median, rounds: status === 'missing' ? [] : [round], ...extra };
}

describe('bench: ping replies', () => {
  it('reads every reply with its sequence number: percentiles and the ten slowest, slowest first', () => {
    const lines = ['PING 100.64.0.2 (100.64.0.2) 56(84) bytes of data.'];
    for (let i = 1; i <= 1000; i++) lines.push(`64 bytes from 100.64.0.2: icmp_seq=${i} ttl=64 time=${(i % 100 === 7 ? 2 + i / 1000 : 0.5).toFixed(3)} ms`);
    const r = parsePingRtts(lines.join('\n'), 1000);
    expect(r.received).toBe(1000);
    expect(r.p50).toBe(0.5);
    expect(r.p90).toBe(0.5);
    // nearest rank: p99 of 1000 is the 990th (ten replies may be slower), p99.9 the 999th
    expect(r.p99).toBe(0.5);
    expect(r.p999).toBe(2.807);
    // one more slow reply and it shows
    lines.push('64 bytes from 100.64.0.2: icmp_seq=1001 ttl=64 time=1.500 ms');
    expect(parsePingRtts(lines.join('\n'), 1001).p99).toBe(1.5);
    expect(r.slowest.map((x) => x.seq)).toEqual([907, 807, 707, 607, 507, 407, 307, 207, 107, 7]);
    expect(parsePingRtts('', 10)).toMatchObject({ received: 0, p50: null, p99: null, slowest: [] });
  });
});

describe('bench: socket drops, buffers and anchor versions', () => {
  it('counts a full receive buffer once (the kernel adds it to InErrors too) and adds send-buffer drops', () => {
    const before = [parseSnmpUdp(SNMP(10, 10, 0)), parseSnmpUdp(SNMP(0, 0, 5))] as const;
    const after = [parseSnmpUdp(SNMP(110, 100, 0)), parseSnmpUdp(SNMP(2, 0, 25))] as const;
    const d = udpDrops(before, after);
    expect(d.a).toEqual({ rcvbufErrors: 90, sndbufErrors: 0, inErrors: 100 });
    expect(d.b).toEqual({ rcvbufErrors: 0, sndbufErrors: 20, inErrors: 2 });
    expect(d.total).toBe(122);
  });

  it('reads the kernel-held buffer sizes from ss -m output', () => {
    expect(parseSsSkmem('UNCONN 0 0 0.0.0.0:4242 0.0.0.0:*\n\t skmem:(r0,rb8388608,t0,tb8388608,f0,w0,o0,bl0,d0)\n')).toEqual({
      rcvbuf: 8388608,
      sndbuf: 8388608,
    });
    expect(parseSsSkmem('')).toBeNull();
  });

  it('reads wireguard-go --version and finds the anchor next to the checkout', () => {
    expect(parseWgVersion('wireguard-go v0.0.20250522\n\nUserspace WireGuard daemon for linux-amd64.\n')).toBe('0.0.20250522');
    expect(parseWgVersion('nothing')).toBeNull();
    expect(defaultWgNewPath('/work/main')).toBe('/work/shared/anchors/wireguard-go/wireguard-go');
  });
});

describe('bench: options', () => {
  it('measures both wireguard-go builds by default and takes the newest one from --wireguard-go-new', () => {
    expect(parseOptions([]).only).toEqual([...IMPLEMENTATIONS]);
    expect(IMPLEMENTATIONS).toContain('wireguard-go-new');
    expect(parseOptions([]).wgNewPath).toBeNull();
    expect(parseOptions(['--wireguard-go-new', '/opt/wg/wireguard-go']).wgNewPath).toBe('/opt/wg/wireguard-go');
    const o = parseOptions(['--only', 'cladnet,wireguard-go-new,micro', '--rounds', '3']);
    expect(o.only).toEqual(['cladnet', 'wireguard-go-new']);
    expect(o.micro).toBe(true);
    expect(o.rounds).toBe(3);
  });

  it('measures only the ping series with --latency, 1000 pings unless --pings says otherwise, and not beside --rss or --micro', () => {
    const o = parseOptions(['--latency', '--only', 'cladnet,wireguard-go-new']);
    expect(o.latency).toBe(true);
    expect(o.pings).toBe(1000);
    expect(o.micro).toBe(false);
    expect(parseOptions(['--latency', '--pings', '300']).pings).toBe(300);
    expect(parseOptions([]).latency).toBe(false);
    expect(parseOptions([]).pings).toBe(200);
    for (const bad of [['--latency', '--rss'], ['--latency', '--micro']]) {
      expect(() => parseOptions(bad)).toThrow(OptionsError);
      try {
        parseOptions(bad);
      } catch (e) {
        expect((e as OptionsError).code).toBe('EUSAGE');
        expect((e as Error).message).toMatch(/--latency/);
      }
    }
  });

  it('measures only the idle RSS with --rss, over --rounds runs, and refuses it beside --only or --micro', () => {
    const o = parseOptions(['--rss', '--rounds', '2']);
    expect(o.rss).toBe(true);
    expect(o.only).toEqual([]);
    expect(o.micro).toBe(false);
    expect(o.rounds).toBe(2);
    expect(parseOptions([]).rss).toBe(false);
    for (const other of [['--only', 'cladnet'], ['--micro']]) {
      expect(() => parseOptions(['--rss', ...other])).toThrow(/--rss goes alone/);
    }
  });

  it('refuses an empty path and an unknown implementation with EUSAGE', () => {
    expect(() => parseOptions(['--wireguard-go-new', ' '])).toThrow(OptionsError);
    try {
      parseOptions(['--only', 'wireguard-go-newest']);
      expect.unreachable();
    } catch (e) {
      expect((e as OptionsError).code).toBe('EUSAGE');
      expect((e as Error).message).toContain('wireguard-go-newest');
    }
  });
});

describe('bench: ratios and the table', () => {
  const implementations: BenchResults['implementations'] = {
    cladnet: impl('ok', { tcp1Mbps: 2000, tcp1Drops: 0, rttP50Ms: 0.6, tcp4Mbps: 3000, rssMiB: 54 }),
    'wireguard-go-new': impl('ok', { tcp1Mbps: 2500, tcp1Drops: 3, rttP50Ms: 0.5, tcp4Mbps: 2400 }),
    'wireguard-go': impl('ok', { tcp1Mbps: 400, tcp1Drops: 13308, rttP50Ms: 0.6 }),
    nebula: impl('missing', {}, { reason: 'not installed: nebula' }),
  };
  const res: BenchResults = {
    version: 1,
    kind: 'full',
    startedAt: '2026-12-02T00:00:00.000Z',
    finishedAt: '2026-12-02T00:01:00.000Z',
    durationS: 60,
    options: { rounds: 3, seconds: 8, pings: 200, pingIntervalMs: 10, only: ['cladnet', 'wireguard-go-new', 'wireguard-go', 'nebula'], nebulaCipher: 'aes' },
    machine: { kernel: 'k', cpus: 2, cpuModel: 'cpu', node: 'v20', iperf3: '3.12' },
    metrics: METRICS,
    implementations,
    ratios: computeRatios(implementations),
    micro: null,
  };

  it('has a ratio against each wireguard-go build, none against a missing anchor, none for drop counts', () => {
    expect(res.ratios['cladnet/wireguard-go-new']!.tcp1Mbps).toBe(0.8);
    expect(res.ratios['cladnet/wireguard-go']!.tcp1Mbps).toBe(5);
    expect(res.ratios['cladnet/wireguard-go-new']!.rttP50Ms).toBe(1.2);
    expect(res.ratios['cladnet/nebula']).toBeUndefined();
    expect(res.ratios['cladnet/wireguard-go-new']!).not.toHaveProperty('tcp1Drops');
  });

  it('prints throughput in Mbit/s with drops beside it, ratio columns per anchor, and a loud line for a missing anchor', () => {
    const text = formatReport(res);
    const lines = text.split('\n');
    const header = lines.find((l) => l.startsWith('metric'))!;
    expect(header).toMatch(/cladnet\s+wireguard-go-new\s+wireguard-go\s+nebula\s+cladnet\/wg-go-new\s+cladnet\/wg-go$/);
    expect(lines.find((l) => l.startsWith('TCP, 1 stream'))).toMatch(/Mbit\/s\s+2000\s+2500\s+400\s+missing\s+0\.80x\s+5\.00x$/);
    expect(lines.find((l) => l.includes('UDP socket drops, both hosts'))).toMatch(/0\s+3\s+13308\s+missing\s+-\s+-$/);
    expect(text).toContain('!! nebula: missing (no ratio against it in this run): not installed: nebula');
    expect(text).toContain('cladnet: cipher x; UDP socket buffers rcv/snd MiB: a 8/8, b ?');
  });

  it('compares cladnet-policy with cladnet on throughput (issue 15: within 5 %) and prints it under the table', () => {
    const withPolicy = { ...implementations, 'cladnet-policy': impl('ok', { tcp1Mbps: 1940, tcp4Mbps: 3030 }) };
    const both = { ...res, options: { ...res.options, only: [...res.options.only, 'cladnet-policy'] }, implementations: withPolicy, ratios: computeRatios(withPolicy) };
    expect(both.ratios['cladnet-policy/cladnet']).toEqual({ tcp1Mbps: 0.97, tcp4Mbps: 1.01 });
    expect(both.ratios['cladnet-rekey/cladnet']).toBeUndefined();
    const text = formatReport(both as BenchResults);
    expect(text).toContain('policy cost, cladnet-policy/cladnet (a 100-rule network policy vs none; issue 15 asks >= 0.95x)');
    expect(text).toMatch(/TCP, 1 stream[^\n]*0\.97x/);
  });

  it('summarises paired policy tests (issue 15) by the median pair ratio, and says met or not', () => {
    const leg = (mbps: number, cpuPerGb: number) => ({ mbps, cpuPerGb, retransmits: 0 });
    const pairs = [pairOf(leg(2400, 5), leg(2376, 5.1)), pairOf(leg(2000, 6), leg(1960, 6)), pairOf(leg(2600, 5), leg(2340, 5.5))];
    expect(pairs.map((p) => p.mbpsRatio)).toEqual([0.99, 0.98, 0.9]);
    const s = summarisePairs(8, 100, pairs, []);
    expect(s.medianMbpsRatio).toBe(0.98);
    expect(s.medianCpuRatio).toBe(1.02);
    const text = formatReport({ ...res, policyPairs: s } as BenchResults);
    expect(text).toMatch(/100-rule policy \/ open policy, TCP 1 stream ↑  0\.980x  met   CPU per GB ↓  1\.020x   \(medians of 3 pairs\)/);
    expect(text).toContain('2600 -> 2340 (0.900; 1.100)');
    const bad = summarisePairs(8, 100, [pairs[2]!], ['pair 2: iperf3 failed']);
    expect(formatReport({ ...res, policyPairs: bad } as BenchResults)).toMatch(/0\.900x  NOT met[\s\S]*error: pair 2: iperf3 failed/);
    expect(summarisePairs(8, 100, [], []).medianMbpsRatio).toBeNull();
    expect(parseOptions([]).policyPairs).toBe(6);
    expect(parseOptions(['--policy-pairs', '0']).policyPairs).toBe(0);
    expect(() => parseOptions(['--policy-pairs', '-1'])).toThrow(/--policy-pairs/);
  });

  it("prints issue 14's targets against wireguard-go-new, met or not, and says so when that anchor is missing", () => {
    const lines = targetLines(res).map((l) => l.trim());
    expect(lines).toContain('TCP 1 stream        >= 1.2x: 0.80x  NOT met');
    expect(lines).toContain('TCP 4 streams       >= 1.2x: 1.25x  met');
    expect(lines).toContain('ping p50            <= 1x: 1.20x  NOT met');
    expect(lines).toContain('tunnel CPU per GB   <= 0.8x: -');
    expect(lines).toContain('idle RSS, one peer  <= 55 MiB: 54.0 MiB  met');
    const without = { ...res, ratios: computeRatios({ ...implementations, 'wireguard-go-new': undefined }) };
    expect(targetLines(without).map((l) => l.trim())).toContain('TCP 1 stream        >= 1.2x: no wireguard-go-new');
  });

  it('judges the ping targets by the interleaved step when it ran, with the rounds\' ratio beside it', () => {
    // cladnet's blocks are 10 % slower than wireguard-go-new's in every block, whatever the block's level
    const wg = [[0.5, 0.5, 0.5, 2], [0.9, 0.9, 0.9, 3]];
    const cl = wg.map((b) => b.map((x) => x * 1.1));
    const s = summarisePaired({ cladnet: cl, 'wireguard-go-new': wg, veth: [[0.05], [0.06]] }, 4, ['wireguard-go-new', 'wireguard-go', 'nebula']);
    expect(s.tunnels.cladnet).toMatchObject({ sent: 8, received: 8 });
    expect(s.tunnels.cladnet!.blockP50.map((x) => x!.toFixed(3))).toEqual(['0.550', '0.990']);
    expect(s.ratios['cladnet/wireguard-go-new']).toEqual({ p50: 1.1, p99: 1.1, blockP50Median: 1.1 });
    expect(s.ratios['cladnet/nebula']).toBeUndefined();
    expect(s.ratios['cladnet/veth']).toBeUndefined();
    const paired = { blocks: 2, pingsPerBlock: 4, intervalMs: 10, order: [], errors: ['nebula: did not start: x'], ...s };
    const lines = targetLines({ ...res, pairedLatency: paired }).map((l) => l.trim());
    expect(lines).toContain('ping p50            <= 1x: 1.10x interleaved (rounds: 1.20x)  NOT met');
    expect(lines).toContain('TCP 4 streams       >= 1.2x: 1.25x  met');
    const text = formatReport({ ...res, pairedLatency: paired });
    expect(text).toMatch(/ping, interleaved \(all tunnels up together, 2 blocks of 4 pings/);
    expect(text).toContain('cladnet/wireguard-go-new: p50 1.10x (median of the blocks\' pairs 1.10x), p99 1.10x');
    expect(formatPairedLatency(paired).join('\n')).toContain('nebula: did not start: x');
    // one reply per block is enough for a p50; a tunnel with no replies has none
    expect(summarisePaired({ cladnet: [[]], nebula: [[]] }, 1, ['nebula']).ratios['cladnet/nebula']).toEqual({ p50: null, p99: null, blockP50Median: null });
  });

  it('rotates the interleaved order each block, so no tunnel is always pinged first', () => {
    expect([0, 1, 2, 3].map((b) => blockOrder(['a', 'b', 'c'], b).join(''))).toEqual(['abc', 'bca', 'cab', 'abc']);
    expect(blockOrder([], 3)).toEqual([]);
    expect(parseOptions([]).pairedBlocks).toBe(5);
    expect(parseOptions(['--paired-blocks', '0']).pairedBlocks).toBe(0);
    expect(() => parseOptions(['--paired-blocks', 'x'])).toThrow(/--paired-blocks/);
  });
});
