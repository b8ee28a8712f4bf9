import { describe, expect, it } from 'vitest';
import { renderStatus } from '../../src/status/client';
import type { StatusDocument, StatusPeer } from '../../src/status/types';

const NOW = Date.parse('2025-06-01T12:00:00.000Z');
const iso = (msAgo: number): string => new Date(NOW - msAgo).toISOString();

function peer(over: Partial<StatusPeer>): StatusPeer {
  return {
    name: 'x',
    overlayIp: '100.64.0.9',
    publicKey: 'AAAA',
    endpoint: '192.0.2.9:51820',
    path: 'direct',
    state: 'up',
    lastHandshake: null,
    lastRx: null,
    rxBytes: 0,
    txBytes: 0,
    rxPackets: 0,
    txPackets: 0,
    rttMs: null,
    lastEndpointChange: null,
    ...over,
  };
}

function sample(): StatusDocument {
  return {
    version: 1,
    self: {
      name: 'alpha',
      network: 'demo',
      overlayIp: '100.64.0.1',
      publicKey: 'cHVibGlj',
      listenPort: 51820,
      endpoints: ['198.51.100.1:51820', '10.0.0.5:51820'],
      interface: 'cladnet0',
      mtu: 1420,
      startedAt: iso(3_600_000),
      crypto: 'sodium-native',
      offload: true,
    },
    etcd: { connected: true, invalidRecords: 0 },
    peers: [
      peer({
        name: 'bravo',
        overlayIp: '100.64.0.2',
        endpoint: '203.0.113.2:51820',
        pathScope: 'public',
        lastPathChange: iso(65_000),
        state: 'up',
        rttMs: 1.234,
        lastRx: iso(5_000),
        rxBytes: 1536,
        txBytes: 512,
      }),
      peer({ name: 'charlie-long-name', overlayIp: '100.64.0.3', endpoint: '192.0.2.3:51820', path: 'none', state: 'connecting', txBytes: 3 * 1024 ** 2 }),
      peer({
        name: 'delta',
        overlayIp: '100.64.0.4',
        endpoint: 'via bravo',
        path: 'relayed',
        via: 'bravo',
        lastPathChange: iso(600_000),
        state: 'down',
        rttMs: 120.5,
        lastRx: iso(600_000),
        rxBytes: 5 * 1024 ** 3,
        txBytes: 1023,
      }),
    ],
    dataplane: {
      rxPackets: 1000,
      rxBytes: 1024 ** 2,
      txPackets: 900,
      txBytes: 2048,
      drops: { short: 0, auth: 3, replay: 0, spoofed: 1, noRoute: 2, sendFailed: 0 },
    },
  };
}

describe('renderStatus', () => {
  it('renders the whole sample exactly', () => {
    expect(renderStatus(sample(), NOW).split('\n')).toEqual([
      'alpha 100.64.0.1 on cladnet0 (network demo, mtu 1420), udp 51820',
      '  crypto: sodium-native, offloads: on',
      '  endpoints: 198.51.100.1:51820, 10.0.0.5:51820',
      '  etcd: connected',
      '',
      'PEER               OVERLAY IP  ENDPOINT           PATH                         STATE       RTT        LAST RX  RX       TX',
      'bravo              100.64.0.2  203.0.113.2:51820  direct public (65s ago)      up          1.23 ms    5s ago   1.5 KiB  512 B',
      'charlie-long-name  100.64.0.3  192.0.2.3:51820    -                            connecting  -          -        0 B      3.0 MiB',
      'delta              100.64.0.4  via bravo          relayed via bravo (10m ago)  down        120.50 ms  10m ago  5.0 GiB  1023 B',
      '',
      'traffic: rx 1000 pkts (1.0 MiB), tx 900 pkts (2.0 KiB)',
      'drops: auth=3 spoofed=1 noRoute=2',
    ]);
  });

  it('shows the IPv6 overlay addresses: ours under the first line, the peers\' in a column of their own', () => {
    const doc = sample();
    doc.self.overlayIp6 = 'fd3c:91e0:7a2b::6440:1';
    doc.self.overlayPrefix6 = 'fd3c:91e0:7a2b::/48';
    doc.peers = doc.peers.slice(0, 2).map((p, i) => ({ ...p, overlayIp6: `fd3c:91e0:7a2b::6440:${i + 2}` }));
    const lines = renderStatus(doc, NOW).split('\n');
    expect(lines[1]).toBe('  overlay ipv6: fd3c:91e0:7a2b::6440:1 (network fd3c:91e0:7a2b::/48)');
    expect(lines[6]).toMatch(/^PEER +OVERLAY IP +OVERLAY IPV6 +ENDPOINT/);
    expect(lines[7]).toMatch(/^bravo +100\.64\.0\.2 +fd3c:91e0:7a2b::6440:2 +203\.0\.113\.2:51820/);
    expect(lines[8]).toMatch(/^charlie-long-name +100\.64\.0\.3 +fd3c:91e0:7a2b::6440:3 /);
  });

  it('shows the process\'s resident memory and CPU time after the endpoints when the agent reports them', () => {
    const doc = sample();
    doc.self.process = { residentBytes: 75_300_864, cpuSeconds: 12.345 };
    const lines = renderStatus(doc, NOW).split('\n');
    expect(lines[3]).toBe('  process: 71.8 MiB resident, 12.3 s CPU');
    expect(renderStatus(sample(), NOW)).not.toContain('process:');
  });

  it('shows what the offloads did when the agent reports it, and says when UDP GSO gave up', () => {
    const doc = sample();
    const offloads = { udpGso: true, gsoMessages: 12, gsoDatagrams: 480, gsoRefused: 0, groMessages: 10, groDatagrams: 400, tunSuperPackets: 5, tunCoalesced: 200 };
    doc.dataplane.offloads = offloads;
    expect(renderStatus(doc, NOW).split('\n')).toContain(
      'offloads: udp gso on (480 datagrams in 12 sends), gro 400 datagrams in 10 receives, tun 200 segments in 5 writes',
    );
    doc.dataplane.offloads = { ...offloads, udpGso: false, gsoMessages: 0, gsoDatagrams: 0, gsoRefused: 3 };
    expect(renderStatus(doc, NOW).split('\n')).toContain(
      'offloads: udp gso off (0 datagrams in 0 sends, 3 refused), gro 400 datagrams in 10 receives, tun 200 segments in 5 writes',
    );
  });

  it('shows the network policy in use: serial, rules for this host with their counts, denials, replies, ignored values', () => {
    const doc = sample();
    expect(renderStatus(doc, NOW)).not.toContain('policy:');
    const rule = { from: 'group:web', to: 'group:db', proto: 'tcp', ports: '5432' };
    doc.policy = {
      ...{ serial: 7, issued: '2026-11-21T00:00:00.000Z', appliedAt: '2026-11-21T00:00:01.000Z', open: false, invalid: 1, stale: 0, denied: 12, replies: 30 },
      rules: [
        { index: 0, id: 'pg', ...rule, here: true, packets: 40 },
        { index: 1, id: null, ...rule, to: 'group:web', here: false, packets: 0 },
        { index: 2, id: null, ...rule, proto: 'icmp', ports: null, here: true, packets: 3 },
      ],
    };
    expect(renderStatus(doc, NOW).split('\n')).toContain(
      'policy: serial 7, 2 of 3 rules for this host; denied 12, replies 30; allowed by rule: [0] pg=40 [2]=3; ignored from etcd: 1 invalid, 0 stale',
    );
  });

  it('lists each peer with its path and state on its own row', () => {
    const rows = renderStatus(sample(), NOW).split('\n');
    const paths: Record<string, string> = { bravo: 'direct public (65s ago)', 'charlie-long-name': '-', delta: 'relayed via bravo (10m ago)' };
    for (const p of sample().peers) {
      const row = rows.find((r) => r.startsWith(`${p.name} `));
      expect(row, p.name).toBeDefined();
      expect(row!.split(/\s{2,}/).slice(0, 5)).toEqual([p.name, p.overlayIp, p.endpoint, paths[p.name], p.state]);
    }
  });

  it.each([
    [{ path: 'direct' }, 'direct'],
    [{ path: 'direct', pathScope: 'private' }, 'direct private'],
    [{ path: 'direct', pathScope: 'public', lastPathChange: iso(3_000) }, 'direct public (3s ago)'],
    [{ path: 'direct', pathScope: null, lastPathChange: null }, 'direct'],
    [{ path: 'relayed', via: 'relay-1' }, 'relayed via relay-1'],
    [{ path: 'relayed', via: null, lastPathChange: iso(180_000) }, 'relayed via ? (3m ago)'],
    [{ path: 'none' }, '-'],
    [{ path: 'none', lastPathChange: iso(0) }, '- (0s ago)'],
  ] as [Partial<StatusPeer>, string][])('PATH column for %o reads %s', (over, text) => {
    const doc = sample();
    doc.peers = [peer({ name: 'p', ...over })];
    const row = renderStatus(doc, NOW).split('\n').find((r) => r.startsWith('p '))!;
    expect(row.split(/\s{2,}/)[3]).toBe(text);
  });

  it('shows a reflexive line (before etcd) only when self.nat is present', () => {
    const plain = renderStatus(sample(), NOW).split('\n');
    expect(plain.some((l) => l.startsWith('  reflexive:'))).toBe(false);
    const cases: [Partial<StatusDocument['self']>, string][] = [
      [{ nat: 'eim', reflexive: '203.0.113.50:40001' }, '  reflexive: 203.0.113.50:40001 (NAT, same mapping for every peer)'],
      [{ nat: 'none', reflexive: '198.51.100.1:51820', relay: true }, '  reflexive: 198.51.100.1:51820 (no NAT), relays for peers'],
      [{ nat: 'varies', reflexive: '203.0.113.50:40007', relay: false }, '  reflexive: 203.0.113.50:40007 (NAT, mapping varies by peer)'],
      [{ nat: 'unknown', reflexive: null }, '  reflexive: - (not known yet)'],
      [{ nat: 'unknown' }, '  reflexive: - (not known yet)'],
    ];
    for (const [self, line] of cases) {
      const doc = sample();
      doc.self = { ...doc.self, ...self };
      const lines = renderStatus(doc, NOW).split('\n');
      expect(lines.slice(2, 5)).toEqual(['  endpoints: 198.51.100.1:51820, 10.0.0.5:51820', line, '  etcd: connected']);
    }
  });

  it('shows only non-zero drop counters, and "none" when all are zero', () => {
    const doc = sample();
    doc.dataplane.drops = { short: 0, badType: 7, auth: 0 };
    expect(renderStatus(doc, NOW)).toMatch(/^drops: badType=7$/m);
    doc.dataplane.drops = { short: 0, auth: 0 };
    expect(renderStatus(doc, NOW)).toMatch(/^drops: none$/m);
    doc.dataplane.drops = {};
    expect(renderStatus(doc, NOW)).toMatch(/^drops: none$/m);
  });

  it('says DISCONNECTED when etcd is down', () => {
    const doc = sample();
    doc.etcd.connected = false;
    const out = renderStatus(doc, NOW);
    expect(out.split('\n')[3]).toBe('  etcd: DISCONNECTED (data plane keeps running)');
    expect(out).not.toContain('etcd: connected');
    doc.etcd.peersFrom = 'cache'; // restarted while etcd was away
    expect(renderStatus(doc, NOW).split('\n')[3]).toBe('  etcd: DISCONNECTED (data plane keeps running; peers from the cache file, not read from etcd since start)');
  });

  it('shows each address conflict after the etcd line, and nothing when there is none', () => {
    const doc = sample();
    expect(renderStatus(doc, NOW)).not.toContain('CONFLICT');
    doc.conflicts = [
      {
        overlayIp: '100.64.0.2',
        winner: { name: 'h2', serial: 'a'.repeat(32), issued: '2026-11-21T00:00:00.000Z' },
        loser: { name: 'h4', serial: 'b'.repeat(32), issued: '2026-11-22T00:00:00.000Z' },
      },
    ];
    const lines = renderStatus(doc, NOW).split('\n');
    expect(lines[4]).toBe(
      `  CONFLICT: 100.64.0.2 is held by h2 (certificate ${'a'.repeat(32)}, issued 2026-11-21T00:00:00.000Z); ` +
        `refused h4 (certificate ${'b'.repeat(32)}, issued 2026-11-22T00:00:00.000Z)`,
    );
    expect(lines[3]).toMatch(/^ {2}etcd: /);
  });

  it('handles no peers and no endpoints', () => {
    const doc = sample();
    doc.peers = [];
    doc.self.endpoints = [];
    const lines = renderStatus(doc, NOW).split('\n');
    expect(lines[2]).toBe('  endpoints: -');
    expect(lines[5]).toBe('no peers yet');
    expect(lines).not.toContain(expect.stringMatching(/^PEER/));
  });

  it.each([
    [0, '0s ago'],
    [119_000, '119s ago'],
    [120_000, '2m ago'],
    [-30_000, '0s ago'], // a handshake "in the future" (clock skew) is shown as now
  ])('last rx %d ms ago reads %s', (msAgo, text) => {
    const doc = sample();
    doc.peers = [peer({ name: 'p', lastRx: iso(msAgo) })];
    const row = renderStatus(doc, NOW).split('\n').find((r) => r.startsWith('p '))!;
    expect(row.split(/\s{2,}/)[6]).toBe(text);
  });
});

describe('etcd column', () => {
  it('appears only when the agent reports etcd per peer, and says what etcd lacks', () => {
    const doc = sample();
    doc.peers = [
      peer({ name: 'p1', etcd: { record: 'present', alive: true } }),
      peer({ name: 'p2', etcd: { record: 'present', alive: false } }),
      peer({ name: 'p3', etcd: { record: 'absent', alive: false } }),
      peer({ name: 'p4', etcd: { record: 'invalid', alive: true } }),
    ];
    const rows = renderStatus(doc, NOW).split('\n');
    expect(rows.find((r) => r.startsWith('PEER'))!.split(/\s{2,}/).at(-1)).toBe('ETCD');
    const marker = (n: string) => rows.find((r) => r.startsWith(`${n} `))!.split(/\s{2,}/).at(-1);
    expect([marker('p1'), marker('p2'), marker('p3'), marker('p4')]).toEqual(['known', 'record, not alive', 'NO RECORD', 'INVALID RECORD, alive']);
    expect(renderStatus(sample(), NOW)).not.toContain('ETCD');
  });
});

describe('subnet routes in the status text', () => {
  it('shows what this host serves, each route with its gateway and standbys, and refused routes', () => {
    const doc = sample();
    doc.self.advertisedRoutes = ['198.19.1.0/24'];
    doc.self.snatRoutes = true;
    doc.self.endpointPins = [{ dst: '198.18.3.2', gateway: '198.18.1.1', dev: 'eth0' }];
    doc.subnets = {
      routes: [
        { prefix: '198.19.2.0/24', gateway: 'gwb', standby: [] },
        { prefix: '198.19.3.0/24', gateway: 'gx', standby: ['gy'] },
      ],
      refused: [{ gateway: 'm', prefix: '198.19.1.0/24', reason: 'not covered by its certificate' }],
      refusedTotal: 1,
    };
    const lines = renderStatus(doc, NOW).split('\n');
    expect(lines).toEqual(
      expect.arrayContaining([
        '  serves routes: 198.19.1.0/24 (source NAT)',
        '  route 198.19.2.0/24 via gwb',
        '  route 198.19.3.0/24 via gx (standby gy)',
        '  REFUSED route 198.19.1.0/24 from m: not covered by its certificate',
        '  pinned 198.18.3.2 via 198.18.1.1 dev eth0 (a subnet route covers it)',
      ]),
    );
    expect(renderStatus(sample(), NOW)).not.toContain('route');
  });
});
