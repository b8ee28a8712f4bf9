import type { MeshBed } from './mesh';
import type { TopologySpec } from './plan';
import { flushConntrack, replaceAddress, replaceAddressTimed, suspendAgent } from './roam';
import { longestGapMs, recoveryMs, startPacedStream, startPings, type PacedStream, type PacedStreamResult, type PingSeries } from './traffic';

/**
 * The roaming cases of issue 5, shared by `npm run bench:roam` and test/e2e/mesh-roam.test.ts.
 * Each case runs on a mesh of ROAM_TOPOLOGY: while the other host pings the moving host's overlay
 * address every 10 ms and streams TCP to it, one thing happens to the moving host, and the case
 * reports how long the overlay took to carry traffic again and whether the stream arrived intact.
 *
 *   1. preflight   the mesh is up; overlay addresses from the agents' status
 *   2. baseline    pings and the stream start; a second of replies proves the path
 *   3. change      the case's event; `changeAt` is when it happened (for a suspend: the resume)
 *   4. recovery    wait for a reply to a ping sent after `changeAt`, up to `limitMs`; then 1 s more
 *   5. verdict     stop the pings, finish the stream, compute recovery and gaps
 */

export const ROAM_CASES = ['address', 'conntrack', 'suspend'] as const;
export type RoamCaseName = (typeof ROAM_CASES)[number];

/** One host on the internet, one behind a cloud-like NAT gateway (endpoint-independent mapping). */
export const ROAM_TOPOLOGY: TopologySpec = {
  hosts: [{ name: 'pub' }, { name: 'lan', site: 'nat' }],
  sites: [{ name: 'nat', nat: 'masquerade' }],
};

interface CaseSpec {
  readonly description: string;
  /** The host the event happens to; the other one pings it. */
  readonly mover: 'pub' | 'lan';
  readonly targetMs: number;
}

export const ROAM_CASE_SPECS: Readonly<Record<RoamCaseName, CaseSpec>> = {
  address: { description: 'address replaced on the internet host', mover: 'pub', targetMs: 1_000 },
  conntrack: { description: "NAT mappings flushed at the LAN host's site", mover: 'lan', targetMs: 1_000 },
  suspend: { description: 'internet host suspended 30 s, address changed meanwhile', mover: 'pub', targetMs: 2_000 },
};

export interface RoamCaseResult {
  readonly name: RoamCaseName;
  readonly description: string;
  readonly mover: string;
  readonly pinger: string;
  /** Epoch ms of the change (for a suspend: of the resume); null when the case did not get there. */
  readonly changeAt: number | null;
  /** From the change to the first reply to a ping sent after it; null: none within the limit. */
  readonly recoveryMs: number | null;
  /** The longest stretch without a ping reply over the whole series. */
  readonly longestGapMs: number | null;
  readonly targetMs: number;
  readonly limitMs: number;
  readonly metTarget: boolean;
  readonly pings: { readonly sent: number; readonly received: number; readonly meanIntervalMs: number | null } | null;
  readonly transfer: PacedStreamResult | null;
  /** The longest time the TCP receiver waited for data. */
  readonly tcpStallMs: number | null;
  /**
   * From the change to when TCP data flowed again for good: the end of the last receiver stall
   * (200 ms or more without data) that ended after the change and began within the limit. Data
   * the agent had queued while stopped can end one stall early; this takes the stalls after it too.
   * 0: the stream never paused; null: it did not finish.
   */
  readonly tcpRecoveryMs: number | null;
  /** What changed (addresses, suspend times, flushed entries) and what the pinger's agent saw after. */
  readonly detail: Record<string, string | number | null>;
  /** Why the case could not be measured (the mesh was not up before it, a tool failed...). */
  readonly error?: string;
}

export interface RoamCaseOptions {
  /** How long to wait for recovery (default 10 s). */
  readonly limitMs?: number;
  /** How long the suspend lasts (default 30 s). */
  readonly suspendMs?: number;
  readonly pingIntervalMs?: number;
  /** TCP port of the stream's receiver (default 7300). */
  readonly streamPort?: number;
  readonly log?: (msg: string) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs one case on `bed` (a mesh of ROAM_TOPOLOGY with both agents running). Never throws: what
 * could not be measured comes back with `error` set. Processes it started end with the bed.
 */
export async function runRoamCase(bed: MeshBed, name: RoamCaseName, opts: RoamCaseOptions = {}): Promise<RoamCaseResult> {
  try {
    return await measureCase(bed, name, opts);
  } catch (e) {
    return roamCaseFailure(name, `the case broke off: ${(e as Error).message.split('\n')[0]}`, opts.limitMs);
  }
}

async function measureCase(bed: MeshBed, name: RoamCaseName, opts: RoamCaseOptions): Promise<RoamCaseResult> {
  const spec = ROAM_CASE_SPECS[name];
  const limitMs = opts.limitMs ?? 10_000;
  const log = opts.log ?? (() => {});
  const mover = spec.mover;
  const pinger = mover === 'pub' ? 'lan' : 'pub';
  const detail: Record<string, string | number | null> = {};
  const base = { name, description: spec.description, mover, pinger, targetMs: spec.targetMs, limitMs, detail };
  const failed = (error: string, partial: Partial<RoamCaseResult> = {}): RoamCaseResult => ({
    ...roamCaseFailure(name, error, limitMs),
    detail,
    ...partial,
  });
  const topo = bed.topo;

  // 1. preflight
  let overlay: string;
  try {
    const docs = await bed.waitUp(undefined, 20_000);
    overlay = docs.get(mover)!.self.overlayIp;
  } catch (e) {
    return failed(`mesh not up before the case: ${(e as Error).message.split('\n')[0]}`);
  }

  // 2. baseline
  const pings = startPings(topo, topo.host(pinger).ns, overlay, { intervalMs: opts.pingIntervalMs ?? 10 });
  let stream: PacedStream;
  try {
    stream = await startPacedStream(topo, { fromNs: topo.host(pinger).ns, toNs: topo.host(mover).ns, toIp: overlay, port: opts.streamPort ?? 7300 });
  } catch (e) {
    await pings.stop();
    return failed(`stream did not start: ${(e as Error).message}`);
  }
  await sleep(1_000);
  if (pings.replies().length === 0) {
    await pings.stop();
    const transfer = await stream.finish({ timeoutMs: 2_000 });
    return failed('no ping replies before the change', { transfer });
  }

  // 3. change
  let changeAt: number;
  try {
    if (name === 'address') {
      detail['oldIp'] = topo.host(mover).underlayIp;
      const moved = await replaceAddressTimed(topo, mover);
      detail['newIp'] = moved.ip;
      changeAt = moved.at;
    } else if (name === 'conntrack') {
      const f = await flushConntrack(topo, 'nat');
      detail['flushedEntries'] = f.flushed;
      changeAt = f.at;
    } else {
      detail['suspendMs'] = opts.suspendMs ?? 30_000;
      const t = await suspendAgent(bed.agent(mover), opts.suspendMs ?? 30_000, async () => {
        await sleep(1_000); // asleep for a while before the cloud moves it
        detail['newIp'] = await replaceAddress(topo, mover);
      });
      detail['stoppedAt'] = new Date(t.stoppedAt).toISOString();
      changeAt = t.resumedAt;
    }
    log(`${name}: changed at ${new Date(changeAt).toISOString()} ${JSON.stringify(detail)}`);
  } catch (e) {
    await pings.stop();
    const transfer = await stream.finish({ timeoutMs: 2_000 });
    return failed(`the change failed: ${(e as Error).message}`, { transfer });
  }

  // 4. recovery
  const first = await pings.waitReplyAfter(changeAt, limitMs);
  log(`${name}: ${first ? `first reply ${(first.at - changeAt).toFixed(0)} ms after the change` : `no reply within ${limitMs} ms`}`);
  if (first) await sleep(1_000);

  // 5. verdict
  const series: PingSeries = await pings.stop();
  const transfer = await stream.finish({ timeoutMs: first ? 60_000 : 5_000 });
  try {
    const peer = (await bed.agent(pinger).status()).peers.find((p) => p.name === mover);
    detail['pingerSees'] = peer ? `${peer.state} ${peer.path ?? ''} ${peer.endpoint}`.replace(/\s+/g, ' ') : 'no peer';
  } catch (e) {
    detail['pingerSees'] = `status failed: ${(e as Error).message}`;
  }
  const rec = recoveryMs(series.replies, changeAt);
  const recovered = rec !== null && rec <= limitMs ? rec : null;
  const firstAt = series.replies[0]?.at ?? series.startedAt;
  const stallEnds = transfer.stalls.filter(([a, b]) => b > changeAt && a <= changeAt + limitMs).map(([, b]) => b - changeAt);
  return {
    ...base,
    changeAt,
    recoveryMs: recovered,
    longestGapMs: longestGapMs(series.replies, firstAt, series.stoppedAt),
    metTarget: recovered !== null && recovered <= spec.targetMs,
    pings: {
      sent: series.sent,
      received: series.replies.length,
      meanIntervalMs: series.sent > 1 ? (series.stoppedAt - series.startedAt) / series.sent : null,
    },
    transfer,
    tcpStallMs: Math.max(0, ...transfer.stalls.map(([a, b]) => b - a)),
    tcpRecoveryMs: stallEnds.length > 0 ? Math.max(...stallEnds) : transfer.ok ? 0 : null,
    detail,
  };
}

/** The result of a case that could not be measured, e.g. because its bed did not come up. */
export function roamCaseFailure(name: RoamCaseName, error: string, limitMs = 10_000): RoamCaseResult {
  const spec = ROAM_CASE_SPECS[name];
  return {
    name,
    description: spec.description,
    mover: spec.mover,
    pinger: spec.mover === 'pub' ? 'lan' : 'pub',
    changeAt: null,
    recoveryMs: null,
    longestGapMs: null,
    targetMs: spec.targetMs,
    limitMs,
    metTarget: false,
    pings: null,
    transfer: null,
    tcpStallMs: null,
    tcpRecoveryMs: null,
    detail: {},
    error,
  };
}

/** A one-line verdict for a table cell: "312 ms", "not recovered within 10 s", or the error. */
export function recoveryText(r: RoamCaseResult): string {
  if (r.error) return `not measured: ${r.error}`;
  return r.recoveryMs !== null ? `${r.recoveryMs.toFixed(0)} ms` : `not recovered within ${r.limitMs / 1000} s`;
}
