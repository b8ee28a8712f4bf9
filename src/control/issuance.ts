import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import { formatIpv4, parseIpv4, parseOverlayCidr } from '../util/ipv4';
import { revokes, tokenRevokes, type TrustAnchor } from './cert';
import { etcdCall } from './etcd';
import { addressesHeldByOthers, describeCert, groupByAddress, otherHolder } from './holders';
import { hostsPrefix, issuedKey, issuedPrefix, leaseKey, parseKey, revokedPrefix, tokensRevokedPrefix, tokenUsesPrefix } from './keys';
import { appendLedger, readLedger } from './ledger';
import { listLeases } from './leases';
import { etcdPages, readPrefix } from './range';
import {
  checkOverlayIpInNetwork,
  HostCert,
  NetworkSpec,
  parseHostCert,
  parseHostRecord,
  parseRevocationRecord,
  parseTokenRevocation,
  RevocationRecord,
  serializeHostCert,
  TokenRevocation,
  serializeLeaseRecord,
} from './records';

/**
 * The operator's view of who holds which overlay address, for `host issue`:
 *
 * 1. gather: certificates from the issuer's ledger (local, append-only; see ledger.ts), from the
 *    signed issuance records under /issued/, from the certificates that consumed join-token uses
 *    (/token-uses/) and from host records in etcd; revocations from the ledger, from /revoked/
 *    and from /tokens-revoked/. Only what verifies against the network's anchor counts, so an etcd
 *    writer can hide certificates (the ledger still has them) but never add one.
 * 2. held: the addresses held now by an unexpired, unrevoked certificate, per address in the
 *    order of `certPrecedence`. Leases play no part.
 * 3. repair: a held address whose lease is missing or names another host gets its lease back
 *    (holder's name and key), so the allocator and every reader of leases agree again.
 * 4. record: a new certificate goes into the ledger (synced) and into /issued/<name> before it
 *    is handed out.
 */

export interface IssuerView {
  /** Valid certificates per overlay address, holder first. */
  readonly held: Map<string, HostCert[]>;
  /** Where the certificates came from (distinct certificates per source, valid or not). */
  readonly counts: { ledger: number; issued: number; hosts: number; revocations: number };
  /** Warnings for the operator: skipped ledger lines and etcd records. */
  readonly warnings: string[];
}

/** `ledgerFile` null: no ledger (a host enrolling with a join token has none). */
export async function loadIssuerView(client: Etcd3, spec: NetworkSpec, anchor: TrustAnchor, ledgerFile: string | null, nowMs: number): Promise<IssuerView> {
  const net = spec.name;
  const warnings: string[] = [];
  const ledger = ledgerFile === null ? { certs: [], revocations: [], skipped: [] } : readLedger(ledgerFile, anchor);
  warnings.push(...ledger.skipped.map((s) => `ledger: skipped ${s}`));

  const certs: HostCert[] = [...ledger.certs];
  const revocations: RevocationRecord[] = [...ledger.revocations];
  const counts = { ledger: ledger.certs.length, issued: 0, hosts: 0, revocations: 0 };

  // Paginated (src/control/range.ts): a network of any size, or a member stuffing its own keys,
  // cannot push one answer over the client's receive limit.
  const prefixes = [hostsPrefix(net), issuedPrefix(net), revokedPrefix(net), tokenUsesPrefix(net), tokensRevokedPrefix(net)];
  const [hosts, issued, revoked, uses, tokensRevoked] = await Promise.all(prefixes.map((p) => readPrefix(etcdPages(client), p)));
  for (const r of [hosts!, issued!, revoked!, uses!, tokensRevoked!]) for (const kv of r.unreadable) warnings.push(`etcd: skipped ${kv.key.toString()}: too large to read`);
  for (const kv of uses!.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'tokenUse' || k.network !== net) continue;
    const c = parseHostCert(kv.value, { network: net });
    const bad = !c.ok ? c.error : c.value.token !== k.token || c.value.use !== k.use ? 'token or use differs from the key' : anchor.verifyCert(c.value, Date.parse(c.value.issued));
    if (bad !== null || !c.ok) {
      warnings.push(`etcd: skipped ${kv.key.toString()}: ${bad}`);
      continue;
    }
    certs.push(c.value);
  }
  const tokenRevocations: TokenRevocation[] = [];
  for (const kv of tokensRevoked!.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'tokenRevoked' || k.network !== net) continue;
    const r = parseTokenRevocation(kv.value, { network: net, token: k.token });
    const bad = r.ok ? anchor.verifyTokenRevocation(r.value) : r.error;
    if (bad !== null || !r.ok) {
      warnings.push(`etcd: ignored an invalid revocation of token ${k.token}: ${bad}`);
      continue;
    }
    tokenRevocations.push(r.value);
  }
  for (const kv of issued!.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'issued' || k.network !== net) continue;
    const c = parseHostCert(kv.value, { network: net, name: k.name });
    const bad = c.ok ? anchor.verifyCert(c.value, Date.parse(c.value.issued)) : c.error;
    if (bad !== null || !c.ok) {
      warnings.push(`etcd: skipped ${issuedKey(net, k.name)}: ${bad}`);
      continue;
    }
    certs.push(c.value);
    counts.issued++;
  }
  for (const kv of hosts!.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'host' || k.network !== net) continue;
    const r = parseHostRecord(kv.value, { network: net, name: k.name });
    // Unsigned or foreign-signed records hold nothing; agents ignore them too.
    if (!r.ok || !r.value.cert || anchor.checkRecord(r.value, Date.parse(r.value.cert.issued)) !== null) continue;
    certs.push(r.value.cert);
    counts.hosts++;
  }
  for (const kv of revoked!.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'revoked' || k.network !== net) continue;
    const r = parseRevocationRecord(kv.value, { network: net, name: k.name });
    if (!r.ok || anchor.verifyRevocation(r.value) !== null) {
      warnings.push(`etcd: ignored an invalid revocation of ${k.name}: ${r.ok ? anchor.verifyRevocation(r.value) : r.error}`);
      continue;
    }
    revocations.push(r.value);
    counts.revocations++;
  }

  const prefix = parseOverlayCidr(spec.cidr, 'cidr');
  const held = groupByAddress(
    certs,
    (c) =>
      c.network === net &&
      anchor.verifyCert(c, nowMs) === null &&
      !revocations.some((r) => revokes(r, c)) &&
      !tokenRevocations.some((r) => tokenRevokes(r, c)) &&
      checkOverlayIpInNetwork(c, prefix, spec.cidr) === null,
  );
  return { held, counts, warnings };
}

/** Addresses `name` must not get: held by a valid certificate of another name. */
export function reservedFor(view: IssuerView, name: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const [ip, c] of addressesHeldByOthers(view.held, name)) out.set(ip, describeCert(c));
  return out;
}

/** Throws EADDRHELD when `overlayIp` is held by a valid certificate of a name other than `name`. */
export function assertAddressFree(view: IssuerView, overlayIp: string, name: string): void {
  const c = otherHolder(view.held, overlayIp, name);
  if (!c) return;
  throw new CladnetError(
    'EADDRHELD',
    `overlayIp: ${overlayIp} is held by ${describeCert(c)}, valid until ${c.notAfter}; refusing to certify it for ${name} (revoke ${c.name} first to free it)`,
    { field: 'overlayIp' },
  );
}

/**
 * Gives every held address whose lease is missing or names another host its lease back (the
 * holder's name and key; create-if-absent or compare-and-swap on the revision read, so a
 * concurrent change wins). Returns one line per lease repaired.
 */
export async function restoreHolderLeases(client: Etcd3, spec: NetworkSpec, view: IssuerView, nowIso: string): Promise<string[]> {
  const net = spec.name;
  const leases = await listLeases(client, net);
  const done: string[] = [];
  const ips = [...view.held.keys()].sort((a, b) => parseIpv4(a)! - parseIpv4(b)!);
  for (const ip of ips) {
    const holder = view.held.get(ip)![0]!;
    const lease = leases.get(ip);
    if (lease?.record?.host === holder.name) continue;
    const key = leaseKey(net, formatIpv4(parseIpv4(ip)!));
    const value = serializeLeaseRecord({ version: 1, host: holder.name, publicKey: holder.publicKey, created: nowIso });
    const txn = lease ? client.if(key, 'Mod', '==', lease.modRevision) : client.if(key, 'Create', '==', 0);
    const res = await etcdCall(`restore lease ${ip} in ${net}`, () => txn.then(client.put(key).value(value)).commit());
    if (!res.succeeded) continue;
    const was = lease ? (lease.record ? `named ${lease.record.host}` : 'was unreadable') : 'was missing';
    done.push(`lease ${ip} ${was}; restored to ${describeCert(holder)}`);
  }
  return done;
}

/** Records a certificate before it is handed out: the ledger first (synced), then /issued/<name>. */
export async function recordIssued(client: Etcd3, ledgerFile: string, cert: HostCert): Promise<void> {
  appendLedger(ledgerFile, { cert });
  const key = issuedKey(cert.network, cert.name);
  await etcdCall(`write ${key}`, () => client.put(key).value(serializeHostCert(cert)).exec());
}
