import * as fs from 'node:fs';
import { castGrpcError, Etcd3, EtcdLeaseInvalidError, IOptions, isRecoverableError } from 'etcd3';
import { CladnetError, isCladnetError } from '../errors';
import { BACKOFF_MAX_MS } from './backoff';
import { checkPasswordTransport } from './credentials';
import type { EtcdLink } from './etcd-link';

/**
 * The etcd client factory and the one place etcd errors become CladnetErrors.
 *
 * Choices that differ from etcd3's defaults, and why:
 * - Unary calls get a deadline (`dialTimeoutMs`, default 5 s): etcd3 1.1 ignores its own
 *   `dialTimeout`, and without a deadline a call to a black-holed endpoint waits for TCP to give up.
 *   Streams (watch, lease keepalive) get no deadline; gRPC keepalive pings detect a dead peer.
 * - With a single endpoint the per-host circuit breaker is replaced by a pass-through: breaking the
 *   only host just adds up to 5 s of refusals after etcd comes back.
 * - Watch reconnect backoff grows from 0.5 s to 30 s with jitter (the registry does not lean on
 *   it: it drops a disconnected watcher and reconnects on the shared `EtcdLink` schedule).
 * - With a `link` (etcd-link.ts), every unary call reports there: an answer marks etcd up, a
 *   recoverable failure marks it down, and while it is down a failed call is not retried at once
 *   (each immediate retry dials a fresh gRPC channel; the callers' loops wait for the next round).
 * - The gRPC receive limit is 16 MiB (`maxReceiveBytes`; grpc-js defaults to 4 MiB). Whole-prefix
 *   reads are paginated (range.ts) so they never need more; the headroom is for a page or a watch
 *   message that carries a few values stuffed up to etcd's own request limit (1.5 MiB by default).
 *
 * Security (all optional): TLS with a CA bundle and/or a client certificate (`tls`, PEM file
 * paths), and etcd user/password authentication (`auth`). The files are read here, once; a missing
 * or unreadable file is an ECONFIG naming the setting.
 */
export interface EtcdOptions {
  endpoints: string[];
  dialTimeoutMs?: number;
  /** Largest gRPC message accepted from etcd, in bytes (default 16 MiB). */
  maxReceiveBytes?: number;
  tls?: { ca?: string; cert?: string; key?: string };
  auth?: { username: string; password?: string; passwordFile?: string };
  /** Send the password over plain http:// to a non-loopback endpoint anyway (warns); else EINSECURE. */
  allowInsecurePassword?: boolean;
  /** Where calls report whether etcd answers (and which stops immediate retries while it does not). */
  link?: EtcdLink;
}

/** The etcd settings of the agent config or of a CLI command's flags, in the shape createEtcd takes. */
export interface EtcdSettings {
  readonly etcd: readonly string[];
  readonly etcdCa?: string;
  readonly etcdCert?: string;
  readonly etcdKey?: string;
  readonly etcdUser?: string;
  readonly etcdPassword?: string;
  readonly etcdPasswordFile?: string;
  readonly etcdAllowInsecurePassword?: boolean;
}

export function etcdOptionsFrom(s: EtcdSettings): EtcdOptions {
  const opts: EtcdOptions = { endpoints: [...s.etcd] };
  if (s.etcdCa !== undefined || s.etcdCert !== undefined || s.etcdKey !== undefined) {
    opts.tls = { ca: s.etcdCa, cert: s.etcdCert, key: s.etcdKey };
  }
  if (s.etcdUser !== undefined) opts.auth = { username: s.etcdUser, password: s.etcdPassword, passwordFile: s.etcdPasswordFile };
  if (s.etcdAllowInsecurePassword === true) opts.allowInsecurePassword = true;
  return opts;
}

function readSetting(file: string, field: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new CladnetError('ECONFIG', `${field}: cannot read ${file}: ${(e as Error).message}`, { field });
  }
}

/** etcd3's `credentials` and `auth` options from our settings (reads the files). */
export function securityOptions(opts: Pick<EtcdOptions, 'tls' | 'auth'>): Pick<IOptions, 'credentials' | 'auth'> {
  const out: Pick<IOptions, 'credentials' | 'auth'> = {};
  const tls = opts.tls;
  if (tls && (tls.ca !== undefined || tls.cert !== undefined || tls.key !== undefined)) {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      throw new CladnetError('ECONFIG', `${tls.cert === undefined ? 'etcdCert' : 'etcdKey'}: a client certificate needs both etcdCert and etcdKey`, {
        field: tls.cert === undefined ? 'etcdCert' : 'etcdKey',
      });
    }
    out.credentials = {
      // null: the system's roots (grpc's createSsl takes null; etcd3's type says Buffer).
      rootCertificate: (tls.ca === undefined ? null : readSetting(tls.ca, 'etcdCa')) as Buffer,
      ...(tls.key === undefined ? {} : { privateKey: readSetting(tls.key, 'etcdKey') }),
      ...(tls.cert === undefined ? {} : { certChain: readSetting(tls.cert, 'etcdCert') }),
    };
  }
  const auth = opts.auth;
  if (auth) {
    if (!auth.username) throw new CladnetError('ECONFIG', 'etcdUser: must not be empty', { field: 'etcdUser' });
    let password = auth.password;
    if (auth.passwordFile !== undefined) {
      if (password !== undefined) throw new CladnetError('ECONFIG', 'etcdPassword: give etcdPassword or etcdPasswordFile, not both', { field: 'etcdPassword' });
      password = readSetting(auth.passwordFile, 'etcdPasswordFile').toString('utf8').replace(/\r?\n$/, '');
    }
    if (!password) throw new CladnetError('ECONFIG', `etcdPassword: user ${auth.username} needs a password (etcdPassword or etcdPasswordFile)`, { field: 'etcdPassword' });
    out.auth = { username: auth.username, password };
  }
  return out;
}

export const DEFAULT_DIAL_TIMEOUT_MS = 5000;
export const DEFAULT_MAX_RECEIVE_BYTES = 16 * 1024 * 1024;

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type HostPolicy = ReturnType<NonNullable<FaultHandling['host']>>;
type WatchBackoff = NonNullable<FaultHandling['watchBackoff']>;
type GlobalPolicy = NonNullable<FaultHandling['global']>;
type CallOptions = Exclude<NonNullable<IOptions['defaultCallOptions']>, (...args: never[]) => unknown>;

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

/** gRPC's "Received message larger than max" (status 8, RESOURCE_EXHAUSTED), as etcd3 casts it or raw. */
export function isTooLargeError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  return err.name === 'GRPCResourceExhastedError' || err.constructor?.name === 'GRPCResourceExhastedError' || (err as { code?: unknown }).code === 8 || /larger than max/i.test(err.message);
}

/**
 * etcd3's default call policy (retry a recoverable error 3 times at once), except that a response
 * too large for the client is not asked for again: it would be just as large (range.ts asks for a
 * smaller page instead), and that nothing is retried at once while `link` says etcd is down.
 * Every outcome is reported to `link`.
 */
function retryPolicy(retries = 3, link?: EtcdLink): GlobalPolicy {
  const policy = {
    onSuccess: () => ({ dispose: () => undefined }),
    onFailure: () => ({ dispose: () => undefined }),
    execute: async <T>(fn: (ctx: { signal: AbortSignal; attempt: number }) => PromiseLike<T> | T): Promise<T> => {
      // A call made while etcd is known to be down gets one attempt: the caller's loop waits for
      // the link's next round. A call made while it was up keeps its retries (with several
      // endpoints each one may land on another member), and reports a failure only when it gives up.
      const wasDown = link !== undefined && !link.up();
      for (let attempt = 0; ; attempt++) {
        try {
          const out = await fn({ signal: new AbortController().signal, attempt });
          link?.ok();
          return out;
        } catch (e) {
          if (!(e instanceof Error && isRecoverableError(e)) || isTooLargeError(e)) {
            // etcd answered, with an error of its own (too large, permission, no such lease).
            if (answeredByEtcd(e)) link?.ok();
            throw e;
          }
          if (attempt >= retries || wasDown) {
            link?.failed(e);
            throw e;
          }
        }
      }
    },
  };
  return policy as unknown as GlobalPolicy;
}

/** An error etcd itself sent back (as opposed to a connection failure or a local one). */
function answeredByEtcd(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (isTooLargeError(e)) return true;
  return !isRecoverableError(e) && /^(Etcd|GRPC)/.test(e.constructor.name) && e.constructor.name !== 'EtcdWatchStreamEnded';
}

/** Exponential backoff 500 ms .. 30 s with +-20 % jitter, in cockatiel's IBackoff shape. */
function watchBackoff(initialMs = 500, maxMs = BACKOFF_MAX_MS): WatchBackoff {
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
  checkPasswordTransport(hosts, opts.auth !== undefined, opts.allowInsecurePassword === true);
  const maxReceive = opts.maxReceiveBytes ?? DEFAULT_MAX_RECEIVE_BYTES;
  if (!Number.isInteger(maxReceive) || maxReceive < 64 * 1024) {
    throw new CladnetError('ECONFIG', `maxReceiveBytes: ${maxReceive} must be an integer >= 65536`, { field: 'maxReceiveBytes' });
  }
  const faultHandling: FaultHandling = { watchBackoff: watchBackoff(), global: retryPolicy(3, opts.link) };
  if (hosts.length === 1) faultHandling.host = () => passThroughPolicy();
  return new Etcd3({
    ...securityOptions(opts),
    hosts,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
    faultHandling,
    grpcOptions: grpcOptions(maxReceive),
  });
}

function grpcOptions(maxReceive: number): NonNullable<IOptions['grpcOptions']> {
  return {
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    'grpc.initial_reconnect_backoff_ms': 200,
    'grpc.max_reconnect_backoff_ms': 2_000,
    'grpc.max_receive_message_length': maxReceive,
  };
}

/** The part of @grpc/grpc-js used here: per-call credentials that add metadata. */
interface GrpcMetadataApi {
  Metadata: new () => { set(key: string, value: string): void };
  credentials: { createFromMetadataGenerator(gen: (params: unknown, cb: (err: Error | null, md?: unknown) => void) => void): unknown };
}

let requireLeaderCreds: unknown = null;

/**
 * Call credentials that add etcd's require-leader metadata (`hasleader: true`) to every call.
 * A member without a leader then refuses the call at once ("etcdserver: no leader") instead of
 * hanging, and cancels a watch stream carrying it once it has had no leader for three election
 * timeouts. etcd3 has no option for per-call metadata; grpc-js's call credentials are the public
 * way in (they are sent on insecure channels too). The grpc-js loaded is the one etcd3 itself
 * uses, found from etcd3's own location.
 */
function requireLeaderCredentials(): unknown {
  if (requireLeaderCreds) return requireLeaderCreds;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const grpc = require(require.resolve('@grpc/grpc-js', { paths: [require.resolve('etcd3')] })) as GrpcMetadataApi;
  requireLeaderCreds = grpc.credentials.createFromMetadataGenerator((_params, cb) => {
    const md = new grpc.Metadata();
    md.set('hasleader', 'true');
    cb(null, md);
  });
  return requireLeaderCreds;
}

/**
 * A client bound to one member of an etcd cluster (`endpoint`, one of `opts.endpoints` or not),
 * for the watch and the liveness keepalive when there are several members (watch-health.ts picks
 * the member). Unlike createEtcd's client it never retries a call (the caller moves to another
 * member instead), reports nothing to a link, and sends etcd's require-leader flag on every call
 * and stream (requireLeaderCredentials). Unary calls get the `dialTimeoutMs` deadline unless the
 * caller gives its own.
 */
export function createMemberClient(opts: EtcdOptions, endpoint: string): Etcd3 {
  const host = normalizeEndpoint(endpoint);
  const timeout = opts.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  const maxReceive = opts.maxReceiveBytes ?? DEFAULT_MAX_RECEIVE_BYTES;
  checkPasswordTransport([host], opts.auth !== undefined, opts.allowInsecurePassword === true);
  const credentials = requireLeaderCredentials() as CallOptions['credentials'];
  return new Etcd3({
    ...securityOptions(opts),
    hosts: [host],
    defaultCallOptions: (ctx) => (ctx.isStream ? { credentials } : { deadline: Date.now() + timeout, credentials }),
    faultHandling: { watchBackoff: watchBackoff(), global: retryPolicy(0), host: () => passThroughPolicy() },
    grpcOptions: grpcOptions(maxReceive),
  });
}

/**
 * One LeaseKeepAlive exchange for lease `id` over `client` (any client, e.g. a member client: etcd3's
 * Lease objects keep a lease alive only through the client that granted it). Resolves when etcd
 * renewed the lease; EtcdLeaseInvalidError when etcd says it has expired; the gRPC error otherwise.
 */
export async function keepaliveLease(client: Etcd3, id: string, deadline: number): Promise<void> {
  const stream = await client.leaseClient.leaseKeepAlive({ deadline });
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (res) => {
      stream.end();
      if (Number(res.TTL) <= 0) reject(new EtcdLeaseInvalidError(id));
      else resolve();
    });
    stream.on('error', (err: Error) => reject(castGrpcError(err)));
    stream.write({ ID: id });
  });
}

/**
 * Drops the client's gRPC channels so the next call dials afresh. For when our own address changed:
 * a connection made from the old address is dead but would only be noticed by keepalive timeouts
 * (up to 15 s). etcd3 does this itself after a failed call (Host.resetAllServices); there is no
 * public way to ask for it, so this reaches the connection pool with a shape check and does
 * nothing when the library's insides look different. Returns whether it reset anything.
 */
export function resetEtcdConnections(client: Etcd3): boolean {
  const pool = (client as unknown as { pool?: { hosts?: unknown } }).pool;
  const hosts = pool?.hosts;
  if (!Array.isArray(hosts)) return false;
  let reset = false;
  for (const h of hosts) {
    const host = h as { resetAllServices?: () => void };
    if (typeof host.resetAllServices === 'function') {
      host.resetAllServices();
      reset = true;
    }
  }
  return reset;
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
