/**
 * Join tokens: a scoped, expiring, limited-use enrolment credential, signed by the offline network
 * key (`cladnet token create|revoke|list`). The trust chain is network key -> grant -> host
 * certificate; see docs/security.md ("Join tokens") for the threat model.
 *
 * 1. create: a fresh Ed25519 *delegate* key pair; the network key signs a grant naming its public
 *    half, the name pattern, the number of uses, the enrolment deadline and the lifetime of the
 *    certificates made under it. The grant (public) goes to /tokens/<id>; the token string the VM
 *    gets holds the grant, the network's trust anchor and the delegate's secret half.
 * 2. enrol (src/control/enroll.ts, run by the agent on a new VM): the host makes its own X25519
 *    key, leases an address, signs its own certificate with the delegate key, naming the use it
 *    takes, and claims that use with a create-if-absent transaction on /token-uses/<id>-<use>.
 *    Then the delegate secret is wiped and the token file removed.
 * 3. revoke: the network key signs a revocation of the token under /tokens-revoked/<id>: no host
 *    enrols with it any more, and every certificate under it but those kept (the hosts that had
 *    enrolled, listed by serial) is revoked.
 *
 * The token string: `cladnet-token-v1.` then base64url of JSON
 * `{"version":1,"trustAnchor":"<b64>","grant":{...TokenGrant...},"secret":"<b64 of 64 bytes>","spec":{...}}`,
 * where `spec` is the network spec as `token create` read and verified it (signed by the network
 * key; absent in tokens made before it existed): the enrolling host holds etcd's spec against it,
 * so an etcd writer cannot hand a new host an earlier spec the network key signed.
 * A token file holds that string (whitespace around it is ignored) and must be mode 0600.
 */
import * as fs from 'node:fs';
import type { Etcd3 } from 'etcd3';
import type { Ed25519 } from '../crypto/sign';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import { signGrant, signTokenRevocation, TrustAnchor } from './cert';
import { checkPrivateMode, readNetworkKey } from './credentials';
import { etcdCall } from './etcd';
import { checkName, parseKey, tokenKey, tokenRevokedKey, tokensPrefix, tokensRevokedPrefix, tokenUsesPrefix } from './keys';
import { getNetwork } from './networks';
import { etcdPages, readPrefix } from './range';
import {
  checkRecordSize,
  HostCert,
  isBase64Of,
  MAX_TOKEN_CERT_DAYS,
  NetworkSpec,
  parseNetworkSpec,
  serializeNetworkSpec,
  MAX_TOKEN_USES,
  NAME_PATTERN_RE,
  parseHostCert,
  parseTokenGrant,
  parseTokenRevocation,
  serializeTokenGrant,
  serializeTokenRevocation,
  TokenGrant,
  TokenRevocation,
} from './records';

export const TOKEN_PREFIX = 'cladnet-token-v1.';
/** Default enrolment period (`--ttl`) and uses (`--uses`). */
export const DEFAULT_TOKEN_TTL = '1h';
export const DEFAULT_TOKEN_USES = 1;
/** Longest enrolment period a token may have. */
export const MAX_TOKEN_TTL_MS = 30 * 86_400_000;

/** A decoded token: the grant (public), the anchor to pin, and the delegate's secret key. */
export interface JoinToken {
  readonly trustAnchor: string;
  readonly grant: TokenGrant;
  /** 64 bytes (libsodium's seed || public key); zero it once used. */
  readonly secret: Uint8Array;
  /** The network spec when the token was made, verified against `trustAnchor`. */
  readonly spec?: NetworkSpec;
}

function etoken(msg: string): CladnetError {
  return new CladnetError('ETOKEN', `token: ${msg}`, { field: 'token' });
}

export function encodeToken(t: JoinToken): string {
  const spec = t.spec === undefined ? undefined : (JSON.parse(serializeNetworkSpec(t.spec)) as unknown);
  const doc = { version: 1, trustAnchor: t.trustAnchor, grant: JSON.parse(serializeTokenGrant(t.grant)) as unknown, secret: Buffer.from(t.secret).toString('base64'), spec };
  return TOKEN_PREFIX + Buffer.from(JSON.stringify(doc)).toString('base64url');
}

/**
 * Decodes a token string and checks its shape and its own consistency: the grant is signed by the
 * trust anchor it travels with, and the secret is the grant's delegate key. Throws ETOKEN.
 */
export function decodeToken(text: string, ed: Ed25519): JoinToken {
  const s = text.trim();
  if (!s.startsWith(TOKEN_PREFIX)) throw etoken(`does not start with ${TOKEN_PREFIX} (not a cladnet join token)`);
  const body = s.slice(TOKEN_PREFIX.length);
  if (!/^[A-Za-z0-9_-]+$/.test(body) || body.length > 8192) throw etoken('is not base64url after the prefix (cut or wrapped?)');
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    throw etoken('does not decode to JSON (cut or wrapped?)');
  }
  if (typeof doc !== 'object' || doc === null || doc['version'] !== 1) throw etoken('version: expected 1');
  if (!isBase64Of(doc['trustAnchor'], 32)) throw etoken('trustAnchor: not base64 of a 32-byte key');
  if (!isBase64Of(doc['secret'], 64)) throw etoken('secret: not base64 of 64 bytes');
  const g = parseTokenGrant((doc['grant'] ?? null) as object);
  if (!g.ok) throw etoken(`grant.${g.error}`);
  const anchor = new TrustAnchor(ed, g.value.network, doc['trustAnchor']);
  const bad = anchor.verifyGrant(g.value);
  if (bad !== null) throw etoken(`grant.${bad}`);
  let spec: NetworkSpec | undefined;
  if (doc['spec'] !== undefined) {
    const parsed = parseNetworkSpec(JSON.stringify(doc['spec']), { name: g.value.network });
    if (!parsed.ok) throw etoken(`spec.${parsed.error}`);
    const unsigned = parsed.value.trustAnchor !== doc['trustAnchor'] ? 'trustAnchor: not the token\'s' : anchor.verifySpec(parsed.value);
    if (unsigned !== null) throw etoken(`spec.${unsigned}`);
    spec = parsed.value;
  }
  const secret = new Uint8Array(Buffer.from(doc['secret'], 'base64'));
  const pub = ed.publicKeyOf(secret);
  if (!pub || Buffer.from(pub).toString('base64') !== g.value.delegateKey) {
    secret.fill(0);
    throw etoken("secret: is not the grant's delegate key");
  }
  return { trustAnchor: doc['trustAnchor'], grant: g.value, secret, ...(spec && { spec }) };
}

/** Reads a token file: must exist, be mode 0600 or stricter (it is a secret), and hold one token. */
export function readTokenFile(file: string): string {
  try {
    checkPrivateMode(file, 'tokenFile');
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof CladnetError) throw new CladnetError('ETOKEN', e.message, { field: 'tokenFile' });
    throw new CladnetError('ETOKEN', `tokenFile: cannot read ${file}: ${(e as Error).message}`, { field: 'tokenFile' });
  }
}

/** Overwrites a token file with zeros, syncs and removes it. Returns the error text when it could not. */
export function wipeTokenFile(file: string): string | null {
  try {
    const size = fs.statSync(file).size;
    const fd = fs.openSync(file, fs.constants.O_WRONLY);
    try {
      fs.writeSync(fd, Buffer.alloc(size), 0, size, 0);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.rmSync(file);
    return null;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    return (e as Error).message;
  }
}

/** "90s", "30m", "1h", "7d" -> milliseconds; throws ECONFIG naming `field`. */
export function parseDuration(s: string, field: string): number {
  const m = /^(\d{1,6})(s|m|h|d)$/.exec(s.trim());
  if (!m) throw new CladnetError('ECONFIG', `${field}: ${JSON.stringify(s)} is not a duration (a number and s, m, h or d, e.g. 30m or 2h)`, { field });
  const unit = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'];
  const ms = Number(m[1]) * unit;
  if (ms <= 0) throw new CladnetError('ECONFIG', `${field}: ${s} must be more than 0`, { field });
  return ms;
}

export interface CreateTokenOptions {
  network: string;
  networkKeyFile: string;
  /** Name pattern (default "*"). */
  names?: string;
  uses?: number;
  /** Enrolment period, e.g. "1h" (default 1h, at most 30d). */
  ttl?: string;
  /** Lifetime of each host certificate made under the token (default 365). */
  certDays?: number;
  /** Security groups the hosts enrolling with it get (`token create --groups`). */
  groups?: readonly string[];
  now?: Date;
}

function checkCreate(o: CreateTokenOptions): { names: string; uses: number; ttlMs: number; certDays: number } {
  const names = o.names ?? '*';
  if (!NAME_PATTERN_RE.test(names)) {
    throw new CladnetError('ECONFIG', `name: ${JSON.stringify(names)} is not a name pattern (a-z, 0-9, '-' and '*', 1-63 characters)`, { field: 'name' });
  }
  const uses = o.uses ?? DEFAULT_TOKEN_USES;
  if (!(Number.isInteger(uses) && uses >= 1 && uses <= MAX_TOKEN_USES)) {
    throw new CladnetError('ECONFIG', `uses: ${uses} must be a whole number from 1 to ${MAX_TOKEN_USES}`, { field: 'uses' });
  }
  const ttlMs = parseDuration(o.ttl ?? DEFAULT_TOKEN_TTL, 'ttl');
  if (ttlMs > MAX_TOKEN_TTL_MS) throw new CladnetError('ECONFIG', `ttl: ${o.ttl} is longer than 30d (a token is for enrolment, not a standing credential)`, { field: 'ttl' });
  const certDays = o.certDays ?? 365;
  if (!(Number.isInteger(certDays) && certDays >= 1 && certDays <= MAX_TOKEN_CERT_DAYS)) {
    throw new CladnetError('ECONFIG', `validDays: ${certDays} must be a whole number from 1 to ${MAX_TOKEN_CERT_DAYS}`, { field: 'validDays' });
  }
  return { names, uses, ttlMs, certDays };
}

/** `token create`: signs a grant with the network key, records it under /tokens/<id>, returns the token. */
export async function createToken(client: Etcd3, o: CreateTokenOptions): Promise<{ token: string; grant: TokenGrant }> {
  checkName(o.network, 'network');
  const c = checkCreate(o);
  const ed = await loadEd25519();
  const key = readNetworkKey(o.networkKeyFile, ed);
  const delegate = ed.generate();
  try {
    const spec = await getNetwork(client, o.network);
    if (spec.trustAnchor !== key.publicKey) {
      throw new CladnetError(
        'EKEY',
        `networkKey: ${o.networkKeyFile} is not the key of network ${o.network} (its public key ${key.publicKey}, the network's trust anchor ${spec.trustAnchor ?? 'none'})`,
        { field: 'networkKey' },
      );
    }
    const grant = signGrant(ed, key.secretKey, {
      network: o.network,
      names: c.names,
      uses: c.uses,
      ttlMs: c.ttlMs,
      certDays: c.certDays,
      groups: o.groups,
      delegateKey: Buffer.from(delegate.publicKey).toString('base64'),
      now: o.now,
    });
    const value = serializeTokenGrant(grant);
    checkRecordSize('token', value);
    const k = tokenKey(o.network, grant.id);
    await etcdCall(`write ${k}`, () => client.put(k).value(value).exec());
    // The spec travels with the token when the network key signed it (a network made before specs
    // were signed has none to vouch for; its hosts are refused at start until it is signed).
    const signed = new TrustAnchor(ed, o.network, key.publicKey).verifySpec(spec) === null;
    return { token: encodeToken({ trustAnchor: key.publicKey, grant, secret: delegate.secretKey, ...(signed && { spec }) }), grant };
  } finally {
    key.secretKey.fill(0);
    delegate.secretKey.fill(0);
  }
}

/** The valid certificates that took uses of `token` (by use), from /token-uses/; what does not verify is left out. */
export async function readTokenUses(client: Etcd3, anchor: TrustAnchor, token: string): Promise<{ byUse: Map<number, HostCert>; invalid: Map<number, string> }> {
  const net = anchor.network;
  const res = await readPrefix(etcdPages(client), tokenUsesPrefix(net, token));
  const byUse = new Map<number, HostCert>();
  const invalid = new Map<number, string>(); // use -> mod revision of a value that does not verify
  for (const kv of res.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'tokenUse' || k.token !== token) continue;
    const c = parseHostCert(kv.value, { network: net });
    const ok = c.ok && c.value.token === token && c.value.use === k.use && anchor.verifyCert(c.value, Date.parse(c.value.issued)) === null;
    if (ok) byUse.set(k.use, c.value);
    else invalid.set(k.use, kv.mod_revision);
  }
  for (const kv of res.unreadable) {
    const k = parseKey(kv.key);
    if (k?.kind === 'tokenUse' && k.token === token) invalid.set(k.use, kv.mod_revision);
  }
  return { byUse, invalid };
}

/** The verified revocation of `token` in etcd, or null. */
export async function readTokenRevocation(client: Etcd3, anchor: TrustAnchor, token: string): Promise<TokenRevocation | null> {
  const k = tokenRevokedKey(anchor.network, token);
  const raw = await etcdCall(`read ${k}`, () => client.get(k).buffer());
  if (raw === null) return null;
  const r = parseTokenRevocation(raw, { network: anchor.network, token });
  return r.ok && anchor.verifyTokenRevocation(r.value) === null ? r.value : null;
}

export interface RevokeTokenOptions {
  network: string;
  networkKeyFile: string;
  token: string;
  /** Revoke the certificates of hosts that already enrolled too (default: keep them). */
  all?: boolean;
  now?: Date;
}

/**
 * `token revoke`: a revocation signed by the network key. By default it keeps the certificates
 * that had taken uses (read from /token-uses/, each verified); `all` revokes those too.
 */
export async function revokeToken(client: Etcd3, o: RevokeTokenOptions): Promise<{ revocation: TokenRevocation; kept: HostCert[] }> {
  checkName(o.network, 'network');
  const ed = await loadEd25519();
  const key = readNetworkKey(o.networkKeyFile, ed);
  try {
    const spec = await getNetwork(client, o.network);
    if (spec.trustAnchor !== key.publicKey) {
      throw new CladnetError('EKEY', `networkKey: ${o.networkKeyFile} is not the key of network ${o.network}`, { field: 'networkKey' });
    }
    const anchor = new TrustAnchor(ed, o.network, key.publicKey);
    const k = tokenRevokedKey(o.network, o.token); // validates the id
    const { byUse } = await readTokenUses(client, anchor, o.token);
    const kept = o.all ? [] : [...byUse.values()];
    const revocation = signTokenRevocation(ed, key.secretKey, { network: o.network, token: o.token, keep: kept.map((c) => c.serial), now: o.now });
    const value = serializeTokenRevocation(revocation);
    checkRecordSize('tokenRevoked', value);
    await etcdCall(`write ${k}`, () => client.put(k).value(value).exec());
    return { revocation, kept };
  } finally {
    key.secretKey.fill(0);
  }
}

export interface TokenListing {
  grant: TokenGrant;
  used: { use: number; name: string; overlayIp: string; serial: string }[];
  revoked: string | null;
  expired: boolean;
}

/** `token list`: the grants under /tokens/ that verify against the network's anchor, with their uses and revocations. */
export async function listTokens(client: Etcd3, network: string, nowMs = Date.now()): Promise<{ tokens: TokenListing[]; skipped: string[] }> {
  const spec = await getNetwork(client, network);
  if (spec.trustAnchor === undefined) throw new CladnetError('ECONFIG', `network: ${network} has no trust anchor`, { field: 'network' });
  const anchor = new TrustAnchor(await loadEd25519(), network, spec.trustAnchor);
  const skipped: string[] = [];
  const [grants, revs] = await Promise.all([readPrefix(etcdPages(client), tokensPrefix(network)), readPrefix(etcdPages(client), tokensRevokedPrefix(network))]);
  const revoked = new Map<string, string>();
  for (const kv of revs.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'tokenRevoked') continue;
    const r = parseTokenRevocation(kv.value, { network, token: k.token });
    if (r.ok && anchor.verifyTokenRevocation(r.value) === null) revoked.set(k.token, r.value.revoked);
    else skipped.push(`${kv.key.toString()}: ${r.ok ? anchor.verifyTokenRevocation(r.value) : r.error}`);
  }
  const tokens: TokenListing[] = [];
  for (const kv of grants.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'token') continue;
    const g = parseTokenGrant(kv.value, { network, id: k.token });
    const bad = g.ok ? anchor.verifyGrant(g.value) : g.error;
    if (bad !== null || !g.ok) {
      skipped.push(`${kv.key.toString()}: ${bad}`);
      continue;
    }
    const { byUse } = await readTokenUses(client, anchor, g.value.id);
    const used = [...byUse.entries()].sort((a, b) => a[0] - b[0]).map(([use, c]) => ({ use, name: c.name, overlayIp: c.overlayIp, serial: c.serial }));
    tokens.push({ grant: g.value, used, revoked: revoked.get(g.value.id) ?? null, expired: Date.parse(g.value.notAfter) < nowMs });
  }
  tokens.sort((a, b) => a.grant.issued.localeCompare(b.grant.issued));
  return { tokens, skipped };
}
