/** `cladnet status`: reads the local API and renders it. */
import * as http from 'node:http';
import { CladnetError } from '../errors';
import type { StatusDocument, StatusPeer } from './types';

/** GET `urlPath` on the agent's socket: the body of a 200 answer, else an ESTATUS error. */
function socketGet(socketPath: string, urlPath: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: urlPath, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode === 200) resolve(body);
        else reject(new CladnetError('ESTATUS', `${socketPath} answered ${urlPath} with ${res.statusCode}: ${body.slice(0, 200)} (an older agent?)`));
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) =>
      reject(
        new CladnetError('ESTATUS', `cannot reach the agent at ${socketPath}: ${e.message} (is cladnet agent running?)`, {
          transient: true,
        }),
      ),
    );
  });
}

export async function fetchStatus(socketPath: string, timeoutMs = 3_000): Promise<StatusDocument> {
  const body = await socketGet(socketPath, '/v1/status', timeoutMs);
  try {
    return JSON.parse(body) as StatusDocument;
  } catch (e) {
    throw new CladnetError('ESTATUS', `bad answer from ${socketPath}: ${(e as Error).message}`);
  }
}

/** The agent's Prometheus metrics (GET /v1/metrics), as text. */
export function fetchMetrics(socketPath: string, timeoutMs = 3_000): Promise<string> {
  return socketGet(socketPath, '/v1/metrics', timeoutMs);
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function ago(iso: string | null, now: number): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n');
}

/**
 * What etcd holds for a peer, in a few words: 'known' (record and alive key), else what is
 * missing. The peer stays a member either way while its certificate is valid.
 */
export function etcdMarker(e: StatusPeer['etcd']): string {
  if (!e) return '-';
  if (e.record === 'present') return e.alive ? 'known' : 'record, not alive';
  const rec = e.record === 'absent' ? 'NO RECORD' : 'INVALID RECORD';
  return e.alive ? `${rec}, alive` : rec;
}

export function renderStatus(doc: StatusDocument, now = Date.now()): string {
  const s = doc.self;
  const lines: string[] = [];
  lines.push(`${s.name} ${s.overlayIp} on ${s.interface} (network ${s.network}, mtu ${s.mtu}), udp ${s.listenPort}`);
  if (s.overlayIp6) lines.push(`  overlay ipv6: ${s.overlayIp6}${s.overlayPrefix6 ? ` (network ${s.overlayPrefix6})` : ''}`);
  lines.push(`  crypto: ${s.crypto || '-'}, offloads: ${s.offload ? 'on' : 'off'}`);
  lines.push(`  endpoints: ${s.endpoints.join(', ') || '-'}`);
  if (s.process) lines.push(`  process: ${(s.process.residentBytes / 1048576).toFixed(1)} MiB resident, ${s.process.cpuSeconds.toFixed(1)} s CPU`);
  if (s.nat !== undefined) {
    const nat = { none: 'no NAT', eim: 'NAT, same mapping for every peer', varies: 'NAT, mapping varies by peer', unknown: 'not known yet' }[s.nat];
    lines.push(`  reflexive: ${s.reflexive ?? '-'} (${nat})${s.relay ? ', relays for peers' : ''}`);
  }
  const since = doc.etcd.downSince ? `, unreachable since ${doc.etcd.downSince}, retrying with backoff` : '';
  const cached = doc.etcd.peersFrom === 'cache' ? '; peers from the cache file, not read from etcd since start' : '';
  lines.push(`  etcd: ${doc.etcd.connected ? 'connected' : `DISCONNECTED (data plane keeps running${since}${cached})`}`);
  for (const c of doc.conflicts ?? []) {
    lines.push(
      `  CONFLICT: ${c.overlayIp} is held by ${c.winner.name} (certificate ${c.winner.serial}, issued ${c.winner.issued}); ` +
        `refused ${c.loser.name} (certificate ${c.loser.serial}, issued ${c.loser.issued})`,
    );
  }
  if (s.advertisedRoutes?.length) lines.push(`  serves routes: ${s.advertisedRoutes.join(', ')}${s.snatRoutes ? ' (source NAT)' : ''}`);
  for (const r of doc.subnets?.routes ?? []) {
    lines.push(`  route ${r.prefix} via ${r.gateway}${r.standby.length ? ` (standby ${r.standby.join(', ')})` : ''}`);
  }
  for (const r of doc.subnets?.refused ?? []) lines.push(`  REFUSED route ${r.prefix} from ${r.gateway}: ${r.reason}`);
  for (const p of s.endpointPins ?? []) lines.push(`  pinned ${p.dst} via ${p.gateway ?? '-'} dev ${p.dev} (a subnet route covers it)`);
  lines.push('');
  if (doc.peers.length === 0) lines.push('no peers yet');
  else {
    const withEtcd = doc.peers.some((p) => p.etcd !== undefined);
    const with6 = doc.peers.some((p) => p.overlayIp6 !== undefined);
    const rows = [['PEER', 'OVERLAY IP', ...(with6 ? ['OVERLAY IPV6'] : []), 'ENDPOINT', 'PATH', 'STATE', 'RTT', 'LAST RX', 'RX', 'TX', ...(withEtcd ? ['ETCD'] : [])]];
    for (const p of doc.peers) {
      const path =
        p.path === 'relayed' ? `relayed via ${p.via ?? '?'}` : p.path === 'direct' ? `direct${p.pathScope ? ` ${p.pathScope}` : ''}` : '-';
      rows.push([
        p.name,
        p.overlayIp,
        ...(with6 ? [p.overlayIp6 ?? '-'] : []),
        p.endpoint,
        path + (p.lastPathChange ? ` (${ago(p.lastPathChange, now)})` : ''),
        p.state,
        p.rttMs === null ? '-' : `${p.rttMs.toFixed(2)} ms`,
        ago(p.lastRx, now),
        bytes(p.rxBytes),
        bytes(p.txBytes),
        ...(withEtcd ? [etcdMarker(p.etcd)] : []),
      ]);
    }
    lines.push(table(rows));
  }
  const d = doc.dataplane;
  lines.push('');
  lines.push(`traffic: rx ${d.rxPackets} pkts (${bytes(d.rxBytes)}), tx ${d.txPackets} pkts (${bytes(d.txBytes)})`);
  if (d.offloads) {
    const o = d.offloads;
    const refused = o.gsoRefused > 0 ? `, ${o.gsoRefused} refused` : '';
    lines.push(
      `offloads: udp gso ${o.udpGso ? 'on' : 'off'} (${o.gsoDatagrams} datagrams in ${o.gsoMessages} sends${refused}), ` +
        `gro ${o.groDatagrams} datagrams in ${o.groMessages} receives, tun ${o.tunCoalesced} segments in ${o.tunSuperPackets} writes`,
    );
  }
  const drops = Object.entries(d.drops).filter(([, n]) => n > 0);
  lines.push(`drops: ${drops.length === 0 ? 'none' : drops.map(([k, n]) => `${k}=${n}`).join(' ')}`);
  const p = doc.policy;
  if (p && p.serial !== null) {
    const here = p.rules.filter((r) => r.here);
    lines.push(
      `policy: serial ${p.serial}${p.open ? ', open here' : ''}, ${here.length} of ${p.rules.length} rules for this host; ` +
        `denied ${p.denied}, replies ${p.replies}; allowed by rule: ${here.map((r) => `[${r.index}]${r.id ? ` ${r.id}` : ''}=${r.packets}`).join(' ') || 'none'}` +
        (p.invalid + p.stale > 0 ? `; ignored from etcd: ${p.invalid} invalid, ${p.stale} stale` : ''),
    );
  }
  if (doc.handshake) {
    const h = doc.handshake;
    const refused = Object.entries(h.drops).filter(([, n]) => n > 0);
    lines.push(
      `handshakes: ${h.completed} completed (${h.rekeys} rekeys), ${h.initiationsSent} initiations sent; refused: ${
        refused.length === 0 ? 'none' : refused.map(([k, n]) => `${k}=${n}`).join(' ')
      }`,
    );
  }
  return lines.join('\n');
}
