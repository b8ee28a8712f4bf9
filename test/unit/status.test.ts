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
      peer({ name: 'bravo', overlayIp: '100.64.0.2', endpoint: '203.0.113.2:51820', state: 'up', rttMs: 1.234, lastRx: iso(5_000), rxBytes: 1536, txBytes: 512 }),
      peer({ name: 'charlie-long-name', overlayIp: '100.64.0.3', endpoint: '192.0.2.3:51820', state: 'connecting', txBytes: 3 * 1024 ** 2 }),
      peer({ name: 'delta', overlayIp: '100.64.0.4', endpoint: '198.18.0.4:51820', state: 'down', rttMs: 120.5, lastRx: iso(600_000), rxBytes: 5 * 1024 ** 3, txBytes: 1023 }),
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
      'PEER               OVERLAY IP  ENDPOINT           STATE       RTT        LAST RX  RX       TX',
      'bravo              100.64.0.2  203.0.113.2:51820  up          1.23 ms    5s ago   1.5 KiB  512 B',
      'charlie-long-name  100.64.0.3  192.0.2.3:51820    connecting  -          -        0 B      3.0 MiB',
      'delta              100.64.0.4  198.18.0.4:51820   down        120.50 ms  10m ago  5.0 GiB  1023 B',
      '',
      'traffic: rx 1000 pkts (1.0 MiB), tx 900 pkts (2.0 KiB)',
      'drops: auth=3 spoofed=1 noRoute=2',
    ]);
  });

  it('lists each peer with its state on its own row', () => {
    const rows = renderStatus(sample(), NOW).split('\n');
    for (const p of sample().peers) {
      const row = rows.find((r) => r.startsWith(`${p.name} `));
      expect(row, p.name).toBeDefined();
      expect(row!.split(/\s{2,}/).slice(0, 4)).toEqual([p.name, p.overlayIp, p.endpoint, p.state]);
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
    expect(row.split(/\s{2,}/)[5]).toBe(text);
  });
});
