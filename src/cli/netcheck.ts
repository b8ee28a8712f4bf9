/**
 * `cladnet netcheck`: the agent measures afresh (STUN servers and a ping to every peer, bounded,
 * POST /v1/netcheck in src/agent/diagnostics.ts) and this renders what it found: our reflexive
 * address, the NAT's kind, the round trips, and whether a relay is there for us.
 */
import { CladnetError } from '../errors';
import type { NetcheckPeer, NetcheckReport } from '../status/diag-types';
import { postLocal, refusal } from './local-api';
import { describePath, formatRtt } from './ping';

export const NAT_TEXT: Record<NetcheckReport['nat'], string> = {
  none: 'none: observers see one of our own addresses',
  eim: 'endpoint-independent mapping: the same public address and port for every destination (direct paths can be punched)',
  varies: 'mapping varies by destination: a new public port per destination (peers behind such NATs need a relay)',
  unknown: 'unknown: no observer off our own networks answered (configure --stun, or no public peer is up)',
};

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => '    ' + r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
}

function answer(p: NetcheckPeer): string {
  if (p.reply) return `${formatRtt(p.reply.rttMs)} ms`;
  return p.error === 'no-session' ? 'no session' : 'no answer';
}

/** A relay peer's line: can it carry our traffic? */
function relayLine(p: NetcheckPeer): string {
  const ok = p.reply?.path === 'direct';
  const how = p.reply ? `answered via ${describePath(p.reply)} in ${formatRtt(p.reply.rttMs)} ms` : p.error === 'no-session' ? 'no session' : 'no answer';
  return `${p.name} (${p.state}): ${ok ? 'reachable' : 'NOT reachable directly'}, ${how}`;
}

export function renderNetcheck(r: NetcheckReport): string {
  const lines: string[] = [];
  lines.push(`netcheck from ${r.self.name} (${r.self.overlayIp}), udp ${r.self.listenPort}, measured in ${formatRtt(r.tookMs)} ms`);
  lines.push(`  reflexive address: ${r.reflexive ?? '-'}`);
  lines.push(`  NAT: ${NAT_TEXT[r.nat]}`);
  if (r.observations.length > 0) {
    lines.push('  seen by:');
    lines.push(...table(r.observations.map((o) => [o.observer, `at ${o.observerIp}`, `saw us at ${o.seen}`])));
  }
  if (r.stun.length === 0) lines.push('  STUN servers: none configured');
  else {
    lines.push('  STUN servers:');
    lines.push(...table(r.stun.map((s) => [s.server, s.rttMs === null ? 'no answer' : `${formatRtt(s.rttMs)} ms`, s.mapped ? `mapped ${s.mapped}` : ''])));
  }
  if (r.peers.length === 0) lines.push('  peers: none yet');
  else {
    lines.push('  peers:');
    const rows = [['PEER', 'OVERLAY IP', 'STATE', 'RTT', 'PATH', 'SAW US AT']];
    for (const p of r.peers) rows.push([p.name, p.overlayIp, p.state, answer(p), p.reply ? describePath(p.reply) : '-', p.seen ?? '-']);
    lines.push(...table(rows));
  }
  const relays = r.peers.filter((p) => p.relay);
  if (relays.length === 0) lines.push('  relays: none in this network');
  else {
    const any = relays.some((p) => p.reply?.path === 'direct');
    lines.push(`  relays: ${any ? 'reachable' : 'NONE reachable'}`);
    for (const p of relays) lines.push(`    ${relayLine(p)}`);
  }
  return lines.join('\n');
}

export async function netcheckCommand(f: { socket: string; json?: boolean; timeout?: string }): Promise<void> {
  const timeoutMs = f.timeout === undefined ? 3_000 : Math.round(Number(f.timeout) * 1000);
  if (!(timeoutMs >= 10 && timeoutMs <= 30_000)) throw new CladnetError('ECONFIG', `timeout: "${f.timeout}" must be from 0.01 to 30 seconds`, { field: 'timeout' });
  const a = await postLocal(f.socket, `/v1/netcheck?timeoutMs=${timeoutMs}`, timeoutMs + 5_000);
  if (a.status !== 200) throw refusal(a);
  const r = a.body as NetcheckReport;
  process.stdout.write(`${f.json ? JSON.stringify(r, null, 2) : renderNetcheck(r)}\n`);
}
