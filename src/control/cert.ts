import { randomBytes } from 'node:crypto';
import type { Ed25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import { checkName, matchesNamePattern } from './keys';
import { formatPrefix, parsePrefix } from '../util/ipv4';
import { canonicalPolicy, type NetworkPolicy } from './policy';
import {
  HostCert,
  MAX_ROUTES,
  HostRecord,
  isBase64Of,
  isPublicKey,
  isValidGroupName,
  MAX_GROUPS,
  NetworkSpec,
  parseHostCert,
  parseNetworkSpec,
  parseRevocationRecord,
  parseTokenGrant,
  parseTokenRevocation,
  RevocationRecord,
  serializeNetworkSpec,
  serializeTokenRevocation,
  TokenGrant,
  TokenRevocation,
} from './records';

/**
 * Host certificates, revocations and the network spec, signed by the network key (Ed25519), and
 * the checks every agent applies to every host record before it becomes a peer.
 *
 * Canonical form: a domain label line, then JSON of the signed fields in a fixed order (the
 * order of the interfaces in records.ts, `signature` left out). The label keeps a certificate's
 * signature from ever passing as a revocation's and the other way round. Validators have already
 * made every field a plain string of a known shape, so JSON.stringify is deterministic here.
 */

export const CERT_LABEL = 'cladnet host certificate v1\n';
export const REVOCATION_LABEL = 'cladnet revocation v1\n';
export const SPEC_LABEL = 'cladnet network spec v1\n';
/** A join token's grant (network key), a certificate made under one (the grant's delegate key), a token's revocation. */
export const GRANT_LABEL = 'cladnet join token grant v1\n';
export const TOKEN_CERT_LABEL = 'cladnet token host certificate v1\n';
export const TOKEN_REVOCATION_LABEL = 'cladnet token revocation v1\n';
/** Default certificate lifetime (`cladnet host issue --valid-days`). */
export const DEFAULT_VALID_DAYS = 365;
export const MAX_VALID_DAYS = 3650;
/** A certificate issued this far in the future (operator's clock ahead of ours) is still accepted. */
export const CLOCK_SKEW_MS = 5 * 60_000;

const DAY_MS = 86_400_000;
const utf8 = new TextEncoder();

export type UnsignedCert = Omit<HostCert, 'signature'>;
export type UnsignedRevocation = Omit<RevocationRecord, 'signature'>;
export type UnsignedNetworkSpec = Omit<NetworkSpec, 'signature'>;
export type UnsignedGrant = Omit<TokenGrant, 'signature'>;
export type UnsignedTokenRevocation = Omit<TokenRevocation, 'signature'>;

/**
 * `relay` is only ever true or absent (then JSON.stringify leaves it out: older certificates keep
 * their bytes). A certificate made under a join token has its own label and adds the token's id
 * and the use it consumed (the grant itself is signed by the network key on its own).
 */
export function canonicalCert(c: UnsignedCert): Uint8Array {
  const { version, network, name, publicKey, overlayIp, issued, notAfter, serial } = c;
  const relay = c.relay === true ? true : undefined;
  // (absent on certificates without routes: JSON.stringify leaves undefined out, old bytes stay)
  const routes = c.routes;
  const groups = c.groups !== undefined && c.groups.length > 0 ? c.groups : undefined; // like relay: absent keeps old bytes
  if (c.token !== undefined) {
    const { token, use } = c;
    return utf8.encode(TOKEN_CERT_LABEL + JSON.stringify({ version, network, name, publicKey, overlayIp, issued, notAfter, serial, relay, groups, token, use }));
  }
  return utf8.encode(CERT_LABEL + JSON.stringify({ version, network, name, publicKey, overlayIp, issued, notAfter, serial, relay, routes, groups }));
}

export function canonicalGrant(g: UnsignedGrant): Uint8Array {
  const { version, network, id, names, uses, issued, notAfter, certDays, delegateKey } = g;
  const groups = g.groups !== undefined && g.groups.length > 0 ? g.groups : undefined; // absent keeps old bytes
  return utf8.encode(GRANT_LABEL + JSON.stringify({ version, network, id, names, uses, issued, notAfter, certDays, delegateKey, groups }));
}

export function canonicalTokenRevocation(r: UnsignedTokenRevocation): Uint8Array {
  const { version, network, token, revoked, keep } = r;
  return utf8.encode(TOKEN_REVOCATION_LABEL + JSON.stringify({ version, network, token, revoked, keep }));
}

/** Everything in the spec but the signature, the trust anchor included. */
export function canonicalNetworkSpec(s: UnsignedNetworkSpec): Uint8Array {
  const { version, name, cidr, mtu, port, created, trustAnchor, serial } = s;
  // (JSON.stringify leaves out an undefined serial: specs signed before it existed keep their bytes)
  return utf8.encode(SPEC_LABEL + JSON.stringify({ version, name, cidr, mtu, port, created, trustAnchor, serial }));
}

export function canonicalRevocation(r: UnsignedRevocation): Uint8Array {
  const { version, network, name, serial, revoked } = r;
  return utf8.encode(REVOCATION_LABEL + JSON.stringify({ version, network, name, serial, revoked }));
}

function b64(u: Uint8Array): string {
  return Buffer.from(u).toString('base64');
}

function bytes(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'base64'));
}

export interface IssueInput {
  network: string;
  name: string;
  publicKey: string; // base64 X25519
  overlayIp: string;
  /** Lifetime in days (default 365). */
  validDays?: number;
  now?: Date;
  /** 32 hex digits; random by default. */
  serial?: string;
  /** The host may relay for others (`host issue --relay`). */
  relay?: boolean;
  /** Prefixes the host may route for the mesh (`host issue --routes`); stored sorted, deduplicated. */
  routes?: readonly string[];
  /** Security groups (`host issue --groups`); sorted and deduplicated here. */
  groups?: readonly string[];
  /**
   * Made under a join token: `secretKey` is then the grant's delegate key, and the certificate
   * names the token and the use it consumes. Never a relay; at most the grant's certDays.
   */
  token?: { grant: TokenGrant; use: number };
}

/** Throws ECONFIG naming the first bad group name, or too many groups. */
function checkGroups(groups: readonly string[]): void {
  const bad = groups.find((g) => !isValidGroupName(g));
  if (bad !== undefined) {
    throw new CladnetError('ECONFIG', `groups: ${JSON.stringify(bad)} is not a valid group name (1-32 of a-z, 0-9, '-', not starting or ending with '-')`, { field: 'groups' });
  }
  if (groups.length > MAX_GROUPS) throw new CladnetError('ECONFIG', `groups: ${groups.length} groups, more than ${MAX_GROUPS}`, { field: 'groups' });
}

/** Builds and signs a certificate; throws ECONFIG naming the bad field. */
export function issueCert(ed: Ed25519, secretKey: Uint8Array, input: IssueInput): HostCert {
  checkName(input.network, 'network');
  checkName(input.name, 'name');
  const t = input.token;
  if (t) {
    if (input.relay === true) throw new CladnetError('ECONFIG', 'relay: a join token cannot certify a relay', { field: 'relay' });
    if (input.routes !== undefined && input.routes.length > 0) {
      throw new CladnetError('ECONFIG', 'routes: a join token cannot certify routes (issue the gateway with host issue --routes)', { field: 'routes' });
    }
    const outside = (input.groups ?? []).filter((x) => !(t.grant.groups ?? []).includes(x));
    if (outside.length > 0) {
      throw new CladnetError('ETOKENSCOPE', `groups: the token does not grant ${outside.join(', ')} (it grants ${t.grant.groups?.join(', ') || 'none'})`, { field: 'groups' });
    }
    if (!matchesNamePattern(t.grant.names, input.name)) {
      throw new CladnetError('ETOKENSCOPE', `name: ${JSON.stringify(input.name)} does not match the token's pattern ${JSON.stringify(t.grant.names)}`, { field: 'name' });
    }
    if (!(Number.isInteger(t.use) && t.use >= 1 && t.use <= t.grant.uses)) {
      throw new CladnetError('ETOKENUSEDUP', `use: ${t.use} is outside the token's 1..${t.grant.uses}`, { field: 'use' });
    }
  }
  if (!isPublicKey(input.publicKey)) {
    throw new CladnetError('ECONFIG', `publicKey: ${JSON.stringify(input.publicKey)} is not base64 of a 32-byte X25519 key`, { field: 'publicKey' });
  }
  const days = input.validDays ?? t?.grant.certDays ?? DEFAULT_VALID_DAYS;
  if (!(days > 0 && days <= (t?.grant.certDays ?? MAX_VALID_DAYS))) {
    throw new CladnetError('ECONFIG', `validDays: ${days} must be more than 0 and at most ${t?.grant.certDays ?? MAX_VALID_DAYS}`, { field: 'validDays' });
  }
  const routes = input.routes === undefined ? [] : canonicalRoutes(input.routes);
  const now = input.now ?? new Date();
  // Under a token: the groups asked for (within the grant's), by default all the grant's.
  const groups = [...new Set(input.groups ?? (t ? (t.grant.groups ?? []) : []))].sort();
  checkGroups(groups);
  const unsigned: UnsignedCert = {
    version: 1,
    network: input.network,
    name: input.name,
    publicKey: input.publicKey,
    overlayIp: input.overlayIp,
    issued: now.toISOString(),
    notAfter: new Date(now.getTime() + Math.round(days * DAY_MS)).toISOString(),
    serial: input.serial ?? randomBytes(16).toString('hex'),
    ...(input.relay === true ? { relay: true as const } : {}),
    ...(routes.length > 0 ? { routes } : {}),
    ...(groups.length > 0 ? { groups } : {}),
    ...(t ? { token: t.grant.id, use: t.use, grant: t.grant } : {}),
  };
  const cert = { ...unsigned, signature: b64(ed.sign(canonicalCert(unsigned), secretKey)) };
  const checked = parseHostCert(cert);
  if (!checked.ok) throw new CladnetError('ECONFIG', `certificate: ${checked.error}`, { field: checked.error.split(':')[0] });
  return checked.value;
}

/** Routes as a certificate stores them: each a canonical prefix, sorted, no duplicates; throws ECONFIG naming a bad one. */
export function canonicalRoutes(list: readonly string[]): string[] {
  const out = new Set<string>();
  for (const r of list) {
    const p = parsePrefix(r.trim(), true);
    if (!p) {
      const loose = parsePrefix(r.trim(), false);
      const why = loose ? `host bits are set (did you mean ${formatPrefix(loose)}?)` : 'expected a.b.c.d/len';
      throw new CladnetError('ECONFIG', `routes: "${r}" is not a valid IPv4 prefix: ${why}`, { field: 'routes' });
    }
    out.add(formatPrefix(p));
  }
  if (out.size > MAX_ROUTES) throw new CladnetError('ECONFIG', `routes: ${out.size} prefixes, at most ${MAX_ROUTES}`, { field: 'routes' });
  return [...out].sort();
}

/** Signs a revocation of `name` (every certificate issued up to `now`, or only `serial`). */
export function signRevocation(
  ed: Ed25519,
  secretKey: Uint8Array,
  input: { network: string; name: string; serial?: string | null; now?: Date },
): RevocationRecord {
  const unsigned: UnsignedRevocation = {
    version: 1,
    network: checkName(input.network, 'network'),
    name: checkName(input.name, 'name'),
    serial: input.serial ?? null,
    revoked: (input.now ?? new Date()).toISOString(),
  };
  const rev = { ...unsigned, signature: b64(ed.sign(canonicalRevocation(unsigned), secretKey)) };
  const checked = parseRevocationRecord(JSON.stringify(rev));
  if (!checked.ok) throw new CladnetError('ECONFIG', `revocation: ${checked.error}`, { field: 'serial' });
  return checked.value;
}

export interface GrantInput {
  network: string;
  names: string;
  uses: number;
  /** How long hosts may enroll with it, in milliseconds. */
  ttlMs: number;
  certDays: number;
  /** Base64 Ed25519 public key the grant delegates to. */
  delegateKey: string;
  /** Security groups certificates made under it may carry. */
  groups?: readonly string[];
  now?: Date;
  id?: string;
}

/** Signs a join token's grant with the network key; throws ECONFIG naming the bad field. */
export function signGrant(ed: Ed25519, secretKey: Uint8Array, input: GrantInput): TokenGrant {
  if (!(Number.isFinite(input.ttlMs) && input.ttlMs > 0)) {
    throw new CladnetError('ECONFIG', `ttl: ${input.ttlMs} ms is not a positive duration`, { field: 'ttl' });
  }
  checkGroups(input.groups ?? []);
  const now = input.now ?? new Date();
  const unsigned: UnsignedGrant = {
    version: 1,
    network: checkName(input.network, 'network'),
    id: input.id ?? randomBytes(16).toString('hex'),
    names: input.names,
    uses: input.uses,
    issued: now.toISOString(),
    notAfter: new Date(now.getTime() + input.ttlMs).toISOString(),
    certDays: input.certDays,
    delegateKey: input.delegateKey,
    ...((input.groups?.length ?? 0) > 0 ? { groups: [...new Set(input.groups)].sort() } : {}),
  };
  const signed = { ...unsigned, signature: b64(ed.sign(canonicalGrant(unsigned), secretKey)) };
  const checked = parseTokenGrant(signed);
  if (!checked.ok) throw new CladnetError('ECONFIG', `token: ${checked.error}`, { field: checked.error.split(':')[0] });
  return checked.value;
}

/** Signs a token's revocation (keeping the certificates whose serials are in `keep`). */
export function signTokenRevocation(
  ed: Ed25519,
  secretKey: Uint8Array,
  input: { network: string; token: string; keep: string[]; now?: Date },
): TokenRevocation {
  const unsigned: UnsignedTokenRevocation = {
    version: 1,
    network: checkName(input.network, 'network'),
    token: input.token,
    revoked: (input.now ?? new Date()).toISOString(),
    keep: [...new Set(input.keep)].sort(),
  };
  const rev = { ...unsigned, signature: b64(ed.sign(canonicalTokenRevocation(unsigned), secretKey)) };
  const checked = parseTokenRevocation(serializeTokenRevocation(rev));
  if (!checked.ok) throw new CladnetError('ECONFIG', `token revocation: ${checked.error}`, { field: 'token' });
  return checked.value;
}

/** True when `rev` (already verified) covers `cert`: made under its token and not kept. */
export function tokenRevokes(rev: TokenRevocation, cert: HostCert): boolean {
  return cert.token === rev.token && cert.network === rev.network && !rev.keep.includes(cert.serial);
}

/** Signs a spec (its trust anchor must be the key's public half); throws ECONFIG when it does not parse. */
export function signNetworkSpec(ed: Ed25519, secretKey: Uint8Array, spec: UnsignedNetworkSpec): NetworkSpec {
  const { version, name, cidr, mtu, port, created, trustAnchor, serial } = spec;
  const unsigned: UnsignedNetworkSpec = { version, name, cidr, mtu, port, created, trustAnchor, serial };
  const signed = { ...unsigned, signature: b64(ed.sign(canonicalNetworkSpec(unsigned), secretKey)) };
  const checked = parseNetworkSpec(serializeNetworkSpec(signed), { name });
  if (!checked.ok) throw new CladnetError('ECONFIG', `network spec: ${checked.error}`, { field: checked.error.split(':')[0] });
  return checked.value;
}

/**
 * Whether peers may use a (trusted) record's host as a relay: it says so and its certificate,
 * signed by the network key, allows it. An etcd writer can clear the flag but not grant it.
 */
export function mayRelay(rec: HostRecord): boolean {
  return rec.relay === true && rec.cert?.relay === true;
}

/** True when `rev` (already verified) covers `cert`. */
export function revokes(rev: RevocationRecord, cert: HostCert): boolean {
  if (rev.network !== cert.network || rev.name !== cert.name) return false;
  if (rev.serial !== null) return rev.serial === cert.serial;
  return Date.parse(cert.issued) <= Date.parse(rev.revoked);
}

/**
 * Signature results kept (about 0.5 KB each). The peer set is recomputed on every etcd change and
 * checks every host, so the cache must hold a whole network: at 4,096 entries, cleared when full,
 * a 5,000-host network re-verified every signature on every change (0.7-1.4 s each, against
 * ~0.1 s with the cache warm). Full: the oldest entry goes.
 */
export const VERIFY_CACHE_MAX = 16384;

/**
 * One network's trust anchor: the public half of its network key, with the checks built on it.
 * Every check returns null when it passes, else the reason, naming the field. Signature results
 * are cached by (canonical bytes, signature): the peer set is recomputed on every etcd change.
 */
export class TrustAnchor {
  readonly publicKey: string;
  private readonly key: Uint8Array;
  private readonly cache = new Map<string, boolean>();

  constructor(
    private readonly ed: Ed25519,
    readonly network: string,
    anchor: string,
  ) {
    if (!isBase64Of(anchor, 32)) {
      throw new CladnetError('EKEY', `trustAnchor: ${JSON.stringify(anchor)} is not base64 of a 32-byte Ed25519 public key`, { field: 'trustAnchor' });
    }
    this.publicKey = anchor;
    this.key = bytes(anchor);
  }

  private verifySignature(message: Uint8Array, signature: string): boolean {
    const id = `${signature}\n${Buffer.from(message).toString('latin1')}`;
    const hit = this.cache.get(id);
    if (hit !== undefined) return hit;
    const ok = this.ed.verify(bytes(signature), message, this.key);
    if (this.cache.size >= VERIFY_CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(id, ok);
    return ok;
  }

  /** Signature by this network's key, network name, and validity period at `nowMs`. */
  verifyCert(cert: HostCert, nowMs: number, field = 'cert'): string | null {
    if (cert.network !== this.network) return `${field}.network: ${JSON.stringify(cert.network)} is not this network (${JSON.stringify(this.network)})`;
    if (cert.token !== undefined) {
      const extra = (cert.groups ?? []).filter((x) => !(cert.grant?.groups ?? []).includes(x));
      if (extra.length > 0) return `${field}.groups: ${extra.join(', ')} not granted by token ${cert.token}`;
      const bad = this.verifyTokenCert(cert, field);
      if (bad !== null) return bad;
    } else if (!this.verifySignature(canonicalCert(cert), cert.signature)) {
      return `${field}.signature: not signed by this network's key (trust anchor ${this.publicKey})`;
    }
    const issued = Date.parse(cert.issued);
    const notAfter = Date.parse(cert.notAfter);
    if (notAfter <= issued) return `${field}.notAfter: ${cert.notAfter} is not after issued ${cert.issued}`;
    if (nowMs + CLOCK_SKEW_MS < issued) return `${field}.issued: not valid before ${cert.issued}`;
    if (nowMs > notAfter) return `${field}.notAfter: expired at ${cert.notAfter}`;
    return null;
  }

  /**
   * The chain of a certificate made under a join token: network key -> grant -> certificate, and
   * the grant's scope: the certificate's use within 1..uses, its name matching the pattern, made
   * while the grant was valid, for at most certDays, and never a relay. (Who got a use first, and
   * the token's revocation, are the peer computation's business: peers.ts.)
   */
  private verifyTokenCert(cert: HostCert, field: string): string | null {
    const g = cert.grant;
    if (!g || cert.use === undefined) return `${field}.grant: missing (a certificate under token ${cert.token} must carry its grant)`;
    if (g.id !== cert.token) return `${field}.grant.id: ${g.id} is not the certificate's token ${cert.token}`;
    const bad = this.verifyGrant(g);
    if (bad !== null) return `${field}.grant.${bad}`;
    if (!this.verifyWith(canonicalCert(cert), cert.signature, g.delegateKey)) {
      return `${field}.signature: not signed by the delegate key of token ${g.id}`;
    }
    if (cert.use < 1 || cert.use > g.uses) return `${field}.use: ${cert.use} is beyond the token's ${g.uses} use(s)`;
    if (!matchesNamePattern(g.names, cert.name)) return `${field}.name: ${JSON.stringify(cert.name)} is outside the token's pattern ${JSON.stringify(g.names)}`;
    if (cert.relay === true) return `${field}.relay: a join token cannot certify a relay`;
    if (cert.routes !== undefined) return `${field}.routes: a join token cannot certify routes`;
    const issued = Date.parse(cert.issued);
    if (issued + CLOCK_SKEW_MS < Date.parse(g.issued)) return `${field}.issued: ${cert.issued} is before the token was made (${g.issued})`;
    if (issued > Date.parse(g.notAfter)) return `${field}.issued: ${cert.issued} is after the token expired (${g.notAfter})`;
    if (Date.parse(cert.notAfter) - issued > g.certDays * DAY_MS) return `${field}.notAfter: longer than the token's ${g.certDays} day(s)`;
    return null;
  }

  private verifyWith(message: Uint8Array, signature: string, publicKey: string): boolean {
    const id = `${publicKey}\n${signature}\n${Buffer.from(message).toString('latin1')}`;
    const hit = this.cache.get(id);
    if (hit !== undefined) return hit;
    const ok = isBase64Of(publicKey, 32) && this.ed.verify(bytes(signature), message, bytes(publicKey));
    if (this.cache.size >= VERIFY_CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(id, ok);
    return ok;
  }

  /** A join token's grant: this network's, signed by its key (its expiry is for enrolment: see token.ts). */
  verifyGrant(g: TokenGrant): string | null {
    if (g.network !== this.network) return `network: ${JSON.stringify(g.network)} is not this network (${JSON.stringify(this.network)})`;
    if (!this.verifySignature(canonicalGrant(g), g.signature)) return `signature: not signed by this network's key (trust anchor ${this.publicKey})`;
    if (Date.parse(g.notAfter) <= Date.parse(g.issued)) return `notAfter: ${g.notAfter} is not after issued ${g.issued}`;
    return null;
  }

  /** Signature by this network's key over a revocation of one of its tokens. */
  verifyTokenRevocation(rev: TokenRevocation): string | null {
    if (rev.network !== this.network) return `network: ${JSON.stringify(rev.network)} is not this network (${JSON.stringify(this.network)})`;
    if (!this.verifySignature(canonicalTokenRevocation(rev), rev.signature)) return `signature: not signed by this network's key (trust anchor ${this.publicKey})`;
    return null;
  }

  /** Signature by this network's key over a revocation of this network. */
  verifyRevocation(rev: RevocationRecord): string | null {
    if (rev.network !== this.network) return `network: ${JSON.stringify(rev.network)} is not this network (${JSON.stringify(this.network)})`;
    if (!this.verifySignature(canonicalRevocation(rev), rev.signature)) {
      return `signature: not signed by this network's key (trust anchor ${this.publicKey})`;
    }
    return null;
  }

  /**
   * The network spec names this network and this anchor and carries the network key's signature
   * over cidr, mtu, port, created and the anchor. A spec from before specs were signed has none.
   */
  verifySpec(spec: NetworkSpec): string | null {
    if (spec.name !== this.network) return `name: ${JSON.stringify(spec.name)} is not this network (${JSON.stringify(this.network)})`;
    if (spec.trustAnchor !== this.publicKey) return `trustAnchor: ${spec.trustAnchor ?? 'none'} is not the pinned anchor ${this.publicKey}`;
    if (spec.signature === undefined) return 'signature: missing (the spec was written before specs were signed, or rewritten without the network key)';
    if (!this.verifySignature(canonicalNetworkSpec(spec), spec.signature)) {
      return `signature: cidr, mtu or port not signed by this network's key (trust anchor ${this.publicKey})`;
    }
    return null;
  }

  /** A network policy (./policy.ts) names this network and carries the network key's signature. */
  verifyPolicy(p: NetworkPolicy): string | null {
    if (p.network !== this.network) return `network: ${JSON.stringify(p.network)} is not this network (${JSON.stringify(this.network)})`;
    if (!this.verifySignature(canonicalPolicy(p), p.signature)) return `signature: not signed by this network's key (trust anchor ${this.publicKey})`;
    return null;
  }

  /**
   * A host record is trusted when it carries a certificate that verifies now and binds exactly
   * the record's network, name, public key and overlay address.
   */
  checkRecord(rec: HostRecord, nowMs: number): string | null {
    const cert = rec.cert;
    if (!cert) return 'cert: missing (the record is not signed by the network key)';
    const bad = this.verifyCert(cert, nowMs);
    if (bad !== null) return bad;
    if (rec.network !== cert.network) return `network: ${JSON.stringify(rec.network)} differs from the certificate's ${JSON.stringify(cert.network)}`;
    if (rec.name !== cert.name) return `name: ${JSON.stringify(rec.name)} differs from the certificate's ${JSON.stringify(cert.name)}`;
    if (rec.publicKey !== cert.publicKey) return `publicKey: ${rec.publicKey} differs from the certificate's ${cert.publicKey}`;
    if (rec.overlayIp !== cert.overlayIp) return `overlayIp: ${rec.overlayIp} differs from the certificate's ${cert.overlayIp}`;
    return null;
  }
}

/**
 * The next moment after `nowMs` at which a certificate among `certs` becomes valid or expires
 * (so the peer set must be recomputed then); null when there is none.
 */
export function nextCertChange(certs: Iterable<HostCert>, nowMs: number): number | null {
  let next: number | null = null;
  for (const c of certs) {
    for (const t of [Date.parse(c.issued) - CLOCK_SKEW_MS, Date.parse(c.notAfter) + 1]) {
      if (t > nowMs && (next === null || t < next)) next = t;
    }
  }
  return next;
}
