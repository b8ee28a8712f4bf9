import type { StatusDocument, StatusPeer } from '../../src/status/types';

/** Status documents for tests of what is built from them (metrics, rendering). */

export const NOW = Date.parse('2026-12-02T12:00:00.000Z');
export const iso = (msAgo: number): string => new Date(NOW - msAgo).toISOString();

export function peer(over: Partial<StatusPeer> & { name: string }): StatusPeer {
  return {
    overlayIp: '100.64.0.9',
    publicKey: 'AAAA',
    endpoint: '198.18.9.2:51820',
    path: 'direct',
    pathScope: 'public',
    via: null,
    lastPathChange: null,
    state: 'up',
    lastHandshake: iso(30_000),
    lastRx: iso(1_000),
    rxBytes: 0,
    txBytes: 0,
    rxPackets: 0,
    txPackets: 0,
    rttMs: 0.5,
    lastEndpointChange: null,
    ...over,
  };
}

/** A host with a peer on each kind of path, one down, drops and handshake refusals. */
export function sampleStatus(peers?: StatusPeer[]): StatusDocument {
  return {
    version: 1,
    self: {
      name: 'h1',
      network: 'demo',
      overlayIp: '100.64.0.1',
      publicKey: 'cHVibGlj',
      listenPort: 51820,
      endpoints: ['198.18.1.2:51820', '198.19.1.2:51820'],
      interface: 'cladnet0',
      mtu: 1420,
      startedAt: iso(3_600_000),
      version: '0.1.0',
      nodeVersion: '20.19.2',
      crypto: 'sodium-native',
      offload: true,
      reflexive: '198.18.0.7:40001',
      nat: 'eim',
      relay: false,
      lastLocalChange: { at: iso(600_000), reason: 'address added' },
      process: { residentBytes: 75_300_864, cpuSeconds: 12.345678 },
    },
    etcd: { connected: true, invalidRecords: 2, untrustedRecords: 1, revokedHosts: 0, link: 'up', downSince: null, outages: 1 },
    handshake: {
      initiationsSent: 12,
      responsesSent: 9,
      completed: 21,
      cookiesSent: 0,
      rekeys: 15,
      drops: { mac1: 3, decrypt: 0, unknownPeer: 1, replay: 2, unexpected: 0, cookieRequired: 0 },
    },
    peers: peers ?? [
      peer({ name: 'h2', overlayIp: '100.64.0.2', endpoint: '198.19.1.3:51820', pathScope: 'private', rttMs: 0.21, rxBytes: 1_234_567, txBytes: 7_654_321, rxPackets: 900, txPackets: 5_400 }),
      peer({ name: 'h3', overlayIp: '100.64.0.3', endpoint: '198.18.3.2:51820', pathScope: 'public', rttMs: 1.5, rxBytes: 10, txBytes: 20, rxPackets: 1, txPackets: 2 }),
      peer({ name: 'h4', overlayIp: '100.64.0.4', endpoint: 'via h3', path: 'relayed', pathScope: null, via: 'h3', rttMs: 3.25, rxBytes: 5, txBytes: 6, rxPackets: 1, txPackets: 1 }),
      peer({ name: 'h5', overlayIp: '100.64.0.5', path: 'none', pathScope: null, state: 'down', rttMs: null, lastHandshake: null, lastRx: null }),
      peer({ name: 'h6', overlayIp: '100.64.0.6', path: 'none', pathScope: null, state: 'connecting', rttMs: null, lastHandshake: null, lastRx: null }),
    ],
    conflicts: [],
    dataplane: {
      rxPackets: 902,
      rxBytes: 1_234_582,
      txPackets: 5_403,
      txBytes: 7_654_347,
      relayedPackets: 0,
      relayedBytes: 0,
      handshakesPassed: 40,
      handshakeCookies: 0,
      offloads: { udpGso: true, gsoMessages: 300, gsoDatagrams: 5_000, gsoRefused: 0, groMessages: 20, groDatagrams: 400, tunSuperPackets: 15, tunCoalesced: 380 },
      drops: { short: 0, badType: 1, unknownPeer: 0, replay: 4, auth: 2, spoofed: 0, malformed: 0, tunWrite: 0, noRoute: 7, sendFailed: 0 },
    },
  };
}
