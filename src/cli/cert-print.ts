/**
 * `cladnet cert print FILE`: a host certificate file (`host issue`, JSON {version, trustAnchor,
 * cert, spec}; a bare certificate too) or a join token (`token create --out`), human readable or as
 * JSON. Public facts only: a token's delegate secret is never printed (it is zeroed as soon as
 * the token is decoded), and a network key file is refused.
 *
 * The signature is checked against the network key or trust anchor given (`--network-key`,
 * `--trust-anchor`), else against the trust anchor the file carries (which says only that the
 * file is whole, not that it is your network's). The check ignores the validity period, which is
 * shown on its own. A file that is neither gets ECERTFILE naming what is wrong.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { TrustAnchor } from '../control/cert';
import { parseCertFile, readNetworkKey } from '../control/credentials';
import { isBase64Of, parseHostCert, type HostCert, type NetworkSpec, type TokenGrant } from '../control/records';
import { decodeToken, TOKEN_PREFIX } from '../control/token';
import type { Ed25519 } from '../crypto/sign';
import { CladnetError, isCladnetError } from '../errors';

/** A key's short id: the first 16 hex digits of SHA-256 over its 32 raw bytes. */
export function keyId(base64Key: string): string {
  return createHash('sha256').update(Buffer.from(base64Key, 'base64')).digest('hex').slice(0, 16);
}

export interface AnchorChoice {
  publicKey: string;
  /** Where it came from: the file itself, --network-key FILE or --trust-anchor. */
  source: 'file' | 'network-key' | 'trust-anchor';
}

export interface SignatureCheck {
  valid: boolean;
  against: AnchorChoice & { keyId: string };
  /** Why not (names the field), when not valid. */
  error: string | null;
}

export interface Validity {
  issued: string;
  notAfter: string;
  state: 'valid' | 'expired' | 'not yet valid';
}

export interface CertInfo {
  kind: 'certificate';
  file: string;
  name: string;
  network: string;
  overlayIp: string;
  publicKey: string;
  fingerprint: string;
  relay: boolean;
  /** Prefixes the host may route for the mesh (`host issue --routes`); empty when none. */
  routes: string[];
  /** Security groups the certificate names (network policies refer to them). */
  groups: string[];
  validity: Validity;
  serial: string;
  /** The key that signed it: the network key, or a join token's delegate key (whose grant the network key signed). */
  issuer: { kind: 'network-key'; keyId: string } | { kind: 'join-token'; token: string; use: number; delegateKeyId: string; grantIssuerKeyId: string | null };
  /** The trust anchor the file carries (a bare certificate has none). */
  fileTrustAnchor: string | null;
  /** The network spec the file carries (null: a bare certificate, or a file written before files carried it). */
  spec: SpecSummary | null;
  signature: SignatureCheck | null;
}

export interface TokenInfo {
  kind: 'token';
  file: string;
  id: string;
  network: string;
  names: string;
  uses: number;
  certDays: number;
  /** Hosts may enrol until notAfter. */
  validity: Validity;
  delegateKeyId: string;
  fileTrustAnchor: string;
  issuer: { kind: 'network-key'; keyId: string };
  /** The network spec the token carries (null: made before tokens carried it). */
  spec: SpecSummary | null;
  signature: SignatureCheck;
}

/** The network spec a certificate file or token carries (what its issuer verified), in short. */
export interface SpecSummary {
  cidr: string;
  mtu: number;
  port: number;
  /** 0: signed before specs had serials */
  serial: number;
}

export type PrintInfo = CertInfo | TokenInfo;

function specSummary(spec: NetworkSpec | undefined): SpecSummary | null {
  return spec === undefined ? null : { cidr: spec.cidr, mtu: spec.mtu, port: spec.port, serial: spec.serial ?? 0 };
}

function bad(file: string, msg: string): CladnetError {
  return new CladnetError('ECERTFILE', `${file}: ${msg}`, { field: 'file' });
}

function validity(issued: string, notAfter: string, nowMs: number): Validity {
  const state = nowMs > Date.parse(notAfter) ? 'expired' : nowMs < Date.parse(issued) ? 'not yet valid' : 'valid';
  return { issued, notAfter, state };
}

function check(ed: Ed25519, network: string, a: AnchorChoice, verify: (t: TrustAnchor) => string | null): SignatureCheck {
  const error = verify(new TrustAnchor(ed, network, a.publicKey));
  return { valid: error === null, against: { ...a, keyId: keyId(a.publicKey) }, error };
}

/** The certificate's signature chain, with the clock set inside its validity (expiry is reported apart). */
function certCheck(ed: Ed25519, cert: HostCert, a: AnchorChoice): SignatureCheck {
  return check(ed, cert.network, a, (t) => t.verifyCert(cert, Date.parse(cert.issued)));
}

function certInfo(
  ed: Ed25519,
  file: string,
  cert: HostCert,
  fileAnchor: string | null,
  given: AnchorChoice | null,
  nowMs: number,
  spec?: NetworkSpec,
): CertInfo {
  const anchor = given ?? (fileAnchor ? { publicKey: fileAnchor, source: 'file' as const } : null);
  // The issuer is who the file says signed it (its anchor); a key given on the command line is what we check against.
  const issuerKey = fileAnchor ?? given?.publicKey ?? null;
  const g = cert.grant;
  return {
    kind: 'certificate',
    file,
    name: cert.name,
    network: cert.network,
    overlayIp: cert.overlayIp,
    publicKey: cert.publicKey,
    fingerprint: keyId(cert.publicKey),
    relay: cert.relay === true,
    routes: [...(cert.routes ?? [])],
    groups: [...(cert.groups ?? [])],
    validity: validity(cert.issued, cert.notAfter, nowMs),
    serial: cert.serial,
    issuer:
      cert.token !== undefined && g
        ? { kind: 'join-token', token: cert.token, use: cert.use ?? 0, delegateKeyId: keyId(g.delegateKey), grantIssuerKeyId: issuerKey ? keyId(issuerKey) : null }
        : { kind: 'network-key', keyId: issuerKey ? keyId(issuerKey) : 'unknown (a bare certificate names no trust anchor)' },
    fileTrustAnchor: fileAnchor,
    spec: specSummary(spec),
    signature: anchor ? certCheck(ed, cert, anchor) : null,
  };
}

function tokenInfo(ed: Ed25519, file: string, text: string, given: AnchorChoice | null, nowMs: number): TokenInfo {
  let grant: TokenGrant;
  let fileAnchor: string;
  let spec: NetworkSpec | undefined;
  try {
    const t = decodeToken(text, ed);
    t.secret.fill(0);
    grant = t.grant;
    fileAnchor = t.trustAnchor;
    spec = t.spec;
  } catch (e) {
    if (isCladnetError(e)) throw bad(file, e.message);
    throw e;
  }
  const anchor = given ?? { publicKey: fileAnchor, source: 'file' as const };
  return {
    kind: 'token',
    file,
    id: grant.id,
    network: grant.network,
    names: grant.names,
    uses: grant.uses,
    certDays: grant.certDays,
    validity: validity(grant.issued, grant.notAfter, nowMs),
    delegateKeyId: keyId(grant.delegateKey),
    fileTrustAnchor: fileAnchor,
    issuer: { kind: 'network-key', keyId: keyId(fileAnchor) },
    spec: specSummary(spec),
    signature: check(ed, grant.network, anchor, (t) => t.verifyGrant(grant)),
  };
}

/** What a file holds; throws ECERTFILE when it is neither a certificate nor a token. */
export function inspectFile(ed: Ed25519, file: string, given: AnchorChoice | null, nowMs = Date.now()): PrintInfo {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw bad(file, `cannot read it: ${(e as Error).message}`);
  }
  const s = text.trim();
  if (s.length === 0) throw bad(file, 'is empty');
  if (s.startsWith(TOKEN_PREFIX)) return tokenInfo(ed, file, s, given, nowMs);
  let doc: unknown;
  try {
    doc = JSON.parse(s);
  } catch {
    throw bad(file, `is neither a certificate (JSON) nor a join token (starting ${TOKEN_PREFIX})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad(file, 'is JSON but not an object: not a certificate file');
  const o = doc as Record<string, unknown>;
  if ('secretKey' in o) throw bad(file, 'is a network key (secret): cert print shows certificates and tokens only, never keys');
  if ('cert' in o) {
    try {
      const c = parseCertFile(s, file);
      return certInfo(ed, file, c.cert, c.trustAnchor, given, nowMs, c.spec);
    } catch (e) {
      // (parseCertFile names the file and the field: "FILE: cert.serial: ...")
      if (isCladnetError(e)) throw new CladnetError('ECERTFILE', e.message, { field: 'file' });
      throw e;
    }
  }
  if ('serial' in o && 'signature' in o) {
    const c = parseHostCert(o);
    if (!c.ok) throw bad(file, `cert.${c.error}`);
    return certInfo(ed, file, c.value, null, given, nowMs);
  }
  throw bad(file, 'is JSON without a "cert" (a certificate file) or a "serial" (a bare certificate)');
}

/** --network-key FILE (its public half; the secret is zeroed at once) or --trust-anchor BASE64, or neither. */
export function anchorFrom(ed: Ed25519, o: { networkKey?: string; trustAnchor?: string }): AnchorChoice | null {
  if (o.networkKey !== undefined && o.trustAnchor !== undefined) {
    throw new CladnetError('ECONFIG', 'networkKey: give --network-key or --trust-anchor, not both', { field: 'networkKey' });
  }
  if (o.networkKey !== undefined) {
    const k = readNetworkKey(o.networkKey, ed);
    k.secretKey.fill(0);
    return { publicKey: k.publicKey, source: 'network-key' };
  }
  if (o.trustAnchor !== undefined) {
    if (!isBase64Of(o.trustAnchor, 32)) {
      throw new CladnetError('EKEY', `trustAnchor: ${JSON.stringify(o.trustAnchor)} is not base64 of a 32-byte Ed25519 public key`, { field: 'trustAnchor' });
    }
    return { publicKey: o.trustAnchor, source: 'trust-anchor' };
  }
  return null;
}

function ago(iso: string, nowMs: number): string {
  const d = (Date.parse(iso) - nowMs) / 86_400_000;
  const n = Math.abs(d) >= 1 ? `${Math.round(Math.abs(d))} day(s)` : `${Math.round(Math.abs(d) * 24)} hour(s)`;
  return d >= 0 ? `in ${n}` : `${n} ago`;
}

function sigLine(s: SignatureCheck | null): string {
  if (!s) return 'not checked (a bare certificate carries no trust anchor: pass --network-key or --trust-anchor)';
  const against =
    s.against.source === 'file'
      ? `the trust anchor in the file, key id ${s.against.keyId} (pass --network-key or --trust-anchor to check it is your network's)`
      : `the ${s.against.source === 'network-key' ? 'network key' : 'trust anchor'} given, key id ${s.against.keyId}`;
  return s.valid ? `valid against ${against}` : `INVALID against ${against}: ${s.error}`;
}

function rows(pairs: [string, string][]): string[] {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `  ${`${k}:`.padEnd(w)} ${v}`);
}

export function renderCertInfo(i: PrintInfo, nowMs = Date.now()): string {
  const until = (v: Validity) => `${v.notAfter} (${v.state === 'expired' ? `EXPIRED ${ago(v.notAfter, nowMs)}` : ago(v.notAfter, nowMs)})`;
  if (i.kind === 'token') {
    return [
      `join token ${i.file}`,
      ...rows([
        ['token id', i.id],
        ['network', i.network],
        ['names', i.names],
        ['uses', String(i.uses)],
        ['certificates', `valid ${i.certDays} day(s) each`],
        ['issued', `${i.validity.issued}${i.validity.state === 'not yet valid' ? ' (NOT YET VALID)' : ''}`],
        ['enrol until', until(i.validity)],
        ['delegate key', `key id ${i.delegateKeyId} (its secret half is in the token: not shown)`],
        ['issuer', `network key, key id ${i.issuer.keyId}`],
        ['network spec', specLine(i.spec)],
        ['signature', sigLine(i.signature)],
      ]),
    ].join('\n');
  }
  const iss = i.issuer;
  const issuer =
    iss.kind === 'join-token'
      ? `join token ${iss.token} (use ${iss.use}): delegate key id ${iss.delegateKeyId}, its grant by network key ${iss.grantIssuerKeyId ?? 'unknown'}`
      : `network key, key id ${iss.keyId}`;
  return [
    `host certificate ${i.file}`,
    ...rows([
      ['name', i.name],
      ['network', i.network],
      ['overlay IP', i.overlayIp],
      ['public key', `${i.publicKey} (fingerprint ${i.fingerprint})`],
      ['relay', i.relay ? 'yes (may relay for others)' : 'no'],
      ['routes', i.routes.length > 0 ? i.routes.join(', ') : 'none'],
      ['groups', i.groups.length > 0 ? i.groups.join(', ') : 'none'],
      ['issued', `${i.validity.issued}${i.validity.state === 'not yet valid' ? ' (NOT YET VALID)' : ''}`],
      ['expires', until(i.validity)],
      ['serial', i.serial],
      ['issuer', issuer],
      ['network spec', specLine(i.spec)],
      ['signature', sigLine(i.signature)],
    ]),
  ].join('\n');
}

/** The spec a file carries: the agent refuses one from etcd older than it (docs/security.md). */
function specLine(s: SpecSummary | null): string {
  return s === null ? 'none (made before files carried it)' : `${s.cidr}, MTU ${s.mtu}, port ${s.port}, serial ${s.serial} (an older spec from etcd is refused)`;
}

/** The command; returns the exit code: 0, or 1 when the signature does not verify. */
export async function certPrintCommand(file: string, o: { json?: boolean; networkKey?: string; trustAnchor?: string }): Promise<number> {
  const { loadEd25519 } = await import('../crypto/sign');
  const ed = await loadEd25519();
  const info = inspectFile(ed, file, anchorFrom(ed, o));
  process.stdout.write(`${o.json ? JSON.stringify(info, null, 2) : renderCertInfo(info)}\n`);
  return info.signature && !info.signature.valid ? 1 : 0;
}
