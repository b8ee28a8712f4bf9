/**
 * `cladnet ping PEER`: the agent pings the peer with its own encrypted probes (not ICMP in the
 * TUN) on the peer's current path, one request per ping (POST /v1/ping, src/agent/diagnostics.ts),
 * and this prints each reply's path and round trip, then a summary as ping(8) does.
 * Exit 0 when any reply came, 1 when none did, 2 for a peer the agent does not know.
 */
import { CladnetError } from '../errors';
import type { PingAnswer } from '../status/diag-types';
import { postLocal, refusal, type ApiAnswer } from './local-api';

export const EXIT_REPLY = 0;
export const EXIT_NO_REPLY = 1;
export const EXIT_UNKNOWN_PEER = 2;

export interface PingOptions {
  peer: string;
  /** Pings to send; 0: until interrupted. */
  count: number;
  intervalS: number;
  timeoutS: number;
}

export interface PingSummary {
  peer: { name: string; overlayIp: string } | null;
  sent: number;
  received: number;
  lossPct: number;
  rttMs: { min: number; avg: number; max: number; mdev: number } | null;
  replies: (PingAnswer & { seq: number })[];
}

/** "0.412", "1.2", "12.3": three significant digits at most. */
export function formatRtt(ms: number): string {
  return String(Number(ms.toPrecision(3)));
}

/** The path a reply took, as the status shows paths: "198.18.2.2:51820 direct public" or "relay h1". */
export function describePath(r: NonNullable<PingAnswer['reply']>): string {
  return r.path === 'relayed' ? `relay ${r.via ?? '?'}` : `${r.endpoint ?? '?'} direct${r.scope ? ` ${r.scope}` : ''}`;
}

/** One line per ping. */
export function renderReply(a: PingAnswer, seq: number, timeoutMs: number): string {
  const hs = a.handshake ? ' (after a handshake)' : '';
  if (a.reply) return `reply from ${a.peer.name}: via ${describePath(a.reply)}, rtt ${formatRtt(a.reply.rttMs)} ms, seq ${seq}${hs}`;
  const why = a.error === 'no-session' ? `no session (no handshake completed within ${timeoutMs} ms)` : `timed out after ${timeoutMs} ms`;
  return `no reply from ${a.peer.name}: ${why}, seq ${seq}`;
}

export function summarize(replies: PingSummary['replies'], sent: number): PingSummary {
  const rtts = replies.flatMap((r) => (r.reply ? [r.reply.rttMs] : []));
  const received = rtts.length;
  let rttMs: PingSummary['rttMs'] = null;
  if (received > 0) {
    const avg = rtts.reduce((a, b) => a + b, 0) / received;
    const mdev = Math.sqrt(rtts.reduce((a, b) => a + (b - avg) ** 2, 0) / received);
    rttMs = { min: Math.min(...rtts), avg, max: Math.max(...rtts), mdev };
  }
  const lossPct = sent === 0 ? 0 : Math.round(((sent - received) / sent) * 1000) / 10;
  return { peer: replies[0]?.peer ?? null, sent, received, lossPct, rttMs, replies };
}

export function renderSummary(s: PingSummary, query: string, tookMs: number): string {
  const lines = [
    '',
    `--- ${s.peer?.name ?? query} ping statistics ---`,
    `${s.sent} sent, ${s.received} received, ${s.lossPct}% loss, time ${Math.round(tookMs)} ms`,
  ];
  const r = s.rttMs;
  if (r) lines.push(`rtt min/avg/max/mdev = ${[r.min, r.avg, r.max, r.mdev].map((x) => x.toFixed(3)).join('/')} ms`);
  return lines.join('\n');
}

export interface PingDeps {
  /** One ping through the agent (POST /v1/ping). */
  request(peer: string, timeoutMs: number): Promise<ApiAnswer>;
  write(text: string): void;
  sleep(ms: number): Promise<void>;
  now(): number;
  /** True once the user interrupted (Ctrl-C): stop and print the summary. */
  stopped(): boolean;
}

/** Runs the pings; returns the exit code (throws ENOPEER for an unknown peer, ESTATUS when the agent is unreachable). */
export async function runPing(o: PingOptions, json: boolean, d: PingDeps): Promise<number> {
  const timeoutMs = Math.round(o.timeoutS * 1000);
  const replies: PingSummary['replies'] = [];
  const started = d.now();
  let sent = 0;
  for (let seq = 1; (o.count === 0 || seq <= o.count) && !d.stopped(); seq++) {
    const at = d.now();
    const a = await d.request(o.peer, timeoutMs);
    if (a.status !== 200) throw refusal(a);
    const answer = a.body as PingAnswer;
    sent++;
    if (seq === 1 && !json) d.write(`PING ${answer.peer.name} (${answer.peer.overlayIp}) with the agent's own ping/pong on its current path`);
    replies.push({ ...answer, seq });
    if (!json) d.write(renderReply(answer, seq, timeoutMs));
    if (o.count !== 0 && seq >= o.count) break;
    const wait = o.intervalS * 1000 - (d.now() - at);
    if (wait > 0 && !d.stopped()) await d.sleep(wait);
  }
  const s = summarize(replies, sent);
  d.write(json ? JSON.stringify(s, null, 2) : renderSummary(s, o.peer, d.now() - started));
  return s.received > 0 ? EXIT_REPLY : EXIT_NO_REPLY;
}

function positive(v: string | undefined, field: string, dflt: number, integer: boolean): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0 || (integer && !Number.isInteger(n))) {
    throw new CladnetError('ECONFIG', `${field}: "${v}" is not a ${integer ? 'whole number' : 'number'} of 0 or more`, { field });
  }
  return n;
}

/** Flags as commander gives them -> checked options. */
export function pingOptions(peer: string, f: { count?: string; interval?: string; timeout?: string }): PingOptions {
  const o = { peer, count: positive(f.count, 'count', 0, true), intervalS: positive(f.interval, 'interval', 1, false), timeoutS: positive(f.timeout, 'timeout', 1, false) };
  if (o.timeoutS < 0.01 || o.timeoutS > 30) throw new CladnetError('ECONFIG', `timeout: ${f.timeout} must be from 0.01 to 30 seconds`, { field: 'timeout' });
  return o;
}

/** The command: real socket, stdout, Ctrl-C ends the run with its summary. Returns the exit code. */
export async function pingCommand(peer: string, f: { count?: string; interval?: string; timeout?: string; socket: string; json?: boolean }): Promise<number> {
  const o = pingOptions(peer, f);
  let stop = false;
  let wake: (() => void) | null = null;
  const onInt = () => {
    stop = true;
    wake?.();
  };
  process.on('SIGINT', onInt);
  try {
    return await runPing(o, !!f.json, {
      request: (p, t) => postLocal(f.socket, `/v1/ping?peer=${encodeURIComponent(p)}&timeoutMs=${t}`, t + 5_000),
      write: (t) => process.stdout.write(`${t}\n`),
      sleep: (ms) =>
        new Promise<void>((r) => {
          const t = setTimeout(r, ms);
          wake = () => {
            clearTimeout(t);
            r();
          };
        }),
      now: () => performance.now(),
      stopped: () => stop,
    });
  } catch (e) {
    if (e instanceof CladnetError && e.code === 'ENOPEER') {
      process.stderr.write(`cladnet: ${e.message} [${e.code}]\n`);
      return EXIT_UNKNOWN_PEER;
    }
    throw e;
  } finally {
    process.off('SIGINT', onInt);
  }
}
