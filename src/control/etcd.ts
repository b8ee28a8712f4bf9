import { Etcd3, IOptions, isRecoverableError } from 'etcd3';
import { CladnetError, isCladnetError } from '../errors';

/**
 * The etcd client factory and the one place etcd errors become CladnetErrors.
 *
 * Choices that differ from etcd3's defaults, and why:
 * - Unary calls get a deadline (`dialTimeoutMs`, default 5 s): etcd3 1.1 ignores its own
 *   `dialTimeout`, and without a deadline a call to a black-holed endpoint waits for TCP to give up.
 *   Streams (watch, lease keepalive) get no deadline; gRPC keepalive pings detect a dead peer.
 * - With a single endpoint the per-host circuit breaker is replaced by a pass-through: breaking the
 *   only host just adds up to 5 s of refusals after etcd comes back.
 * - Watch reconnect backoff is capped at 2 s (etcd3's default grows to 30 s).
 */
export interface EtcdOptions {
  endpoints: string[];
  dialTimeoutMs?: number;
}

export const DEFAULT_DIAL_TIMEOUT_MS = 5000;

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type HostPolicy = ReturnType<NonNullable<FaultHandling['host']>>;
type WatchBackoff = NonNullable<FaultHandling['watchBackoff']>;

/** Normalises "host:port" or "http(s)://host:port[/]" to what etcd3 expects; throws ECONFIG. */
export function normalizeEndpoint(s: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? s : `http://${s}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    throw new CladnetError('ECONFIG', `etcd: ${JSON.stringify(s)} is not an endpoint (expected http://host:port)`, { field: 'etcd' });
  }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname || (u.pathname !== '/' && u.pathname !== '')) {
    throw new CladnetError('ECONFIG', `etcd: ${JSON.stringify(s)} is not an endpoint (expected http://host:port)`, { field: 'etcd' });
  }
  const port = u.port || '2379';
  return `${u.protocol}//${u.hostname}:${port}`;
}

function passThroughPolicy(): HostPolicy {
  const noEvent = () => ({ dispose: () => undefined });
  const policy = {
    onSuccess: noEvent,
    onFailure: noEvent,
    execute: async <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> => fn({ signal: new AbortController().signal }),
  };
  return policy as unknown as HostPolicy;
}

/** Exponential backoff 100 ms .. 2 s with +-20 % jitter, in cockatiel's IBackoff shape. */
function watchBackoff(initialMs = 100, maxMs = 2000): WatchBackoff {
  const make = (base: number): { duration: number; next: () => unknown } => ({
    duration: Math.round(base * (0.8 + Math.random() * 0.4)),
    next: () => make(Math.min(maxMs, base * 2)),
  });
  return { next: () => make(initialMs) } as unknown as WatchBackoff;
}

export function createEtcd(opts: EtcdOptions): Etcd3 {
  if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) {
    throw new CladnetError('ECONFIG', 'etcd: at least one endpoint is required', { field: 'etcd' });
  }
  const hosts = opts.endpoints.map(normalizeEndpoint);
  const timeout = opts.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  if (!Number.isInteger(timeout) || timeout <= 0) {
    throw new CladnetError('ECONFIG', `dialTimeoutMs: ${timeout} must be a positive integer`, { field: 'dialTimeoutMs' });
  }
  const faultHandling: FaultHandling = { watchBackoff: watchBackoff() };
  if (hosts.length === 1) faultHandling.host = () => passThroughPolicy();
  return new Etcd3({
    hosts,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
    faultHandling,
    grpcOptions: {
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2_000,
    },
  });
}

const TRANSIENT_NAMES = new Set([
  'GRPCUnavailableError',
  'GRPCDeadlineExceededError',
  'GRPCCancelledError',
  'GRPCInternalError',
  'GRPCUnknownError',
  'GRPCAbortedError',
  'GRPCResourceExhastedError',
  'GRPCProtocolError',
  'BrokenCircuitError',
  'EtcdWatchStreamEnded',
  'TaskCancelledError',
]);

/** True when retrying the etcd call later may succeed (connection trouble, timeouts, overload). */
export function isTransientEtcdError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (isCladnetError(err)) return err.transient;
  if (isRecoverableError(err)) return true;
  return TRANSIENT_NAMES.has(err.constructor.name) || TRANSIENT_NAMES.has(err.name);
}

/** Wraps any error from an etcd call as EETCD (CladnetErrors pass through unchanged). */
export function toEtcdError(err: unknown, action: string): CladnetError {
  if (isCladnetError(err)) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const transient = isTransientEtcdError(err);
  return new CladnetError('EETCD', `etcd: ${action} failed: ${msg}${transient ? ' (is etcd reachable?)' : ''}`, {
    transient,
    cause: err,
  });
}

/** Runs one etcd operation, mapping its failure with `toEtcdError`. */
export async function etcdCall<T>(action: string, fn: () => PromiseLike<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toEtcdError(e, action);
  }
}
