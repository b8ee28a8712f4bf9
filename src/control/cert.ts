import { randomBytes } from 'node:crypto';
import type { Ed25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import { checkName } from './keys';
import { HostCert, HostRecord, isBase64Of, isPublicKey, NetworkSpec, parseHostCert, parseNetworkSpec, parseRevocationRecord, RevocationRecord, serializeNetworkSpec } from './records';

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

/** `relay` is only ever true or absent (then JSON.stringify leaves it out: older certificates keep their bytes). */
export function canonicalCert(c: UnsignedCert): Uint8Array {
  const { version, network, name, publicKey, overlayIp, issued, notAfter, serial } = c;
  const relay = c.relay === true ? true : undefined;
  return utf8.encode(CERT_LABEL + JSON.stringify({ version, network, name, publicKey, overlayIp, issued, notAfter, serial, relay }));
}

/** Everything in the spec but the signature, the trust anchor included. */
export function canonicalNetworkSpec(s: UnsignedNetworkSpec): Uint8Array {
  const { version, name, cidr, mtu, port, created, trustAnchor } = s;
  return utf8.encode(SPEC_LABEL + JSON.stringify({ version, name, cidr, mtu, port, created, trustAnchor }));
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
}

/** Builds and signs a certificate; throws ECONFIG naming the bad field. */
export function issueCert(ed: Ed25519, secretKey: Uint8Array, input: IssueInput): HostCert {
  checkName(input.network, 'network');
  checkName(input.name, 'name');
  if (!isPublicKey(input.publicKey)) {
    throw new CladnetError('ECONFIG', `publicKey: ${JSON.stringify(input.publicKey)} is not base64 of a 32-byte X25519 key`, { field: 'publicKey' });
  }
  const days = input.validDays ?? DEFAULT_VALID_DAYS;
  if (!(days > 0 && days <= MAX_VALID_DAYS)) {
    throw new CladnetError('ECONFIG', `validDays: ${days} must be more than 0 and at most ${MAX_VALID_DAYS}`, { field: 'validDays' });
  }
  const now = input.now ?? new Date();
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
  };
  const cert = { ...unsigned, signature: b64(ed.sign(canonicalCert(unsigned), secretKey)) };
  const checked = parseHostCert(cert);
  if (!checked.ok) throw new CladnetError('ECONFIG', `certificate: ${checked.error}`, { field: checked.error.split(':')[0] });
  return checked.value;
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

/** Signs a spec (its trust anchor must be the key's public half); throws ECONFIG when it does not parse. */
export function signNetworkSpec(ed: Ed25519, secretKey: Uint8Array, spec: UnsignedNetworkSpec): NetworkSpec {
  const { version, name, cidr, mtu, port, created, trustAnchor } = spec;
  const unsigned: UnsignedNetworkSpec = { version, name, cidr, mtu, port, created, trustAnchor };
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
    if (!this.verifySignature(canonicalCert(cert), cert.signature)) {
      return `${field}.signature: not signed by this network's key (trust anchor ${this.publicKey})`;
    }
    const issued = Date.parse(cert.issued);
    const notAfter = Date.parse(cert.notAfter);
    if (notAfter <= issued) return `${field}.notAfter: ${cert.notAfter} is not after issued ${cert.issued}`;
    if (nowMs + CLOCK_SKEW_MS < issued) return `${field}.issued: not valid before ${cert.issued}`;
    if (nowMs > notAfter) return `${field}.notAfter: expired at ${cert.notAfter}`;
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
