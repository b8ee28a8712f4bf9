/**
 * Messages between the swarm bench's coordinator (harness.ts) and its worker processes
 * (worker.ts), over the fork() IPC channel with `serialization: 'advanced'` (typed arrays pass
 * as they are). Every request carries an `id`; the worker answers once with the same id.
 *
 * Times are `performance.timeOrigin + performance.now()` in milliseconds: one machine, one
 * clock, comparable across processes to well under a millisecond.
 */
import type { HostCert, HostRecord, NetworkSpec } from '../../src/control/records';
import type { ConsumerKind } from './consumer';

/** One virtual agent as the coordinator hands it to a worker. */
export interface AgentSpec {
  readonly index: number;
  readonly name: string;
  /** Its record before the registry sets `epoch` and `updated`. */
  readonly record: HostRecord;
  readonly cert: HostCert;
}

export interface InitRequest {
  readonly type: 'init';
  readonly id: number;
  readonly endpoint: string;
  readonly spec: NetworkSpec;
  readonly agents: readonly AgentSpec[];
  /** Every agent of the swarm (all workers): how many peers "complete" means is agents - 1. */
  readonly total: number;
  readonly consumer: ConsumerKind;
  /** Directory for the agents' peer cache files (as the agent keeps one), or null for none. */
  readonly cacheDir: string | null;
  readonly logLevel: string;
}

/** Cold start: every agent of the worker watches, publishes and holds its alive key at once. */
export interface StartRequest {
  readonly type: 'start';
  readonly id: number;
  /** Answer after this long even if some agents are not complete yet (ms). */
  readonly limitMs: number;
}

/** One change as the coordinator tracked it: the host, the epoch it published, when the put started. */
export interface ChangeRef {
  readonly host: string;
  readonly epoch: number;
  readonly at: number;
}

/**
 * Delivery of `changes` to this worker's agents (every agent but the changed one): per change and
 * agent, the time from `at` to the first consumer event showing that host at `epoch` or newer.
 */
export interface CollectRequest {
  readonly type: 'collect';
  readonly id: number;
  readonly changes: readonly ChangeRef[];
  /** Forget the observations afterwards (next phase starts clean). */
  readonly reset: boolean;
}

/** Compares every agent's peer table with `expected` (host name -> epoch; self excluded per agent). */
export interface VerifyRequest {
  readonly type: 'verify';
  readonly id: number;
  readonly expected: ReadonlyArray<readonly [string, number]>;
}

export interface StatsRequest {
  readonly type: 'stats';
  readonly id: number;
}

export interface StopRequest {
  readonly type: 'stop';
  readonly id: number;
}

export type Request = InitRequest | StartRequest | CollectRequest | VerifyRequest | StatsRequest | StopRequest;

export interface StartReply {
  /** Per agent of this worker (same order as init): when its table first held total - 1 peers (NaN: never, within the wait). */
  readonly completeAt: Float64Array;
  readonly errors: readonly string[];
}

export interface CollectReply {
  /** Latencies in ms of every (change, agent) pair delivered. */
  readonly latencies: Float64Array;
  /** For each delivered pair, the change's index in the request (to bucket latencies by time). */
  readonly changeIndex: Uint32Array;
  /** Pairs not delivered (yet). */
  readonly undelivered: number;
}

export interface VerifyReply {
  readonly agents: number;
  readonly mismatched: number;
  /** A few mismatches, described. */
  readonly examples: readonly string[];
}

export interface StatsReply {
  readonly peersMin: number;
  readonly peersMax: number;
  readonly watchEvents: number;
  readonly rangeKeys: number;
  readonly rangeBytes: number;
  readonly reloads: number;
  readonly invalidRecords: number;
  readonly connected: number;
  readonly warnings: number;
  /** Registrations retried after a failure (Agent.register's loop). */
  readonly registerRetries: number;
  readonly firstWarnings: readonly string[];
  readonly rssBytes: number;
}

export type Reply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: string };

/** Sent by the worker once its module is loaded, before any request. */
export interface Hello {
  readonly hello: true;
  readonly pid: number;
}
