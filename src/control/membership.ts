/**
 * The operator's side of membership, for `cladnet network create`, `host issue` and `host revoke`:
 *
 * 1. create:  a fresh Ed25519 network key; its public half goes into the network spec as the
 *             trust anchor, its secret half into a 0600 file (written first, removed again if the
 *             network cannot be created), never into etcd.
 * 2. issue:   the network key must be private (0600), well formed and the network's anchor; the host
 *             gets (or keeps) its overlay address lease, and a certificate binding name, X25519 key
 *             and address, signed by the network key. An address that an unexpired, unrevoked
 *             certificate of another name holds (in the issuer's ledger or in etcd; issuance.ts) is
 *             never handed out, whatever the leases say. The certificate is recorded in the ledger
 *             and under /issued/<name> before it is returned.
 * 3. revoke:  a signed revocation under /revoked/<name> (and in the ledger), then the host's lease
 *             is released. An etcd writer without the network key can neither forge nor alter either.
 * 4. sign:    the spec's cidr, mtu, port, created and trust anchor, signed by the network key
 *             (`network create` signs; `network sign` signs a spec written before specs were).
 */
import * as fs from 'node:fs';
import type { Etcd3 } from 'etcd3';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import { canonicalRoutes, issueCert, signNetworkSpec, signRevocation, TrustAnchor } from './cert';
import { readNetworkKey, writeNetworkKey, type NetworkKey } from './credentials';
import { etcdCall } from './etcd';
import { checkName, networkKey, revokedKey } from './keys';
import { assertAddressFree, loadIssuerView, recordIssued, reservedFor, restoreHolderLeases } from './issuance';
import { appendLedger, ledgerFileFor } from './ledger';
import { leaseOverlayIp, releaseOverlayIp } from './leases';
import { buildNetworkSpec, createNetwork, getNetwork, nextSpecSerial, type CreateNetworkInput } from './networks';
import { overlaps, parseOverlayCidr, parsePrefix } from '../util/ipv4';
import {
  checkRecordSize,
  HostCert,
  isPublicKey,
  NetworkSpec,
  parseNetworkSpec,
  parseRevocationRecord,
  RevocationRecord,
  serializeNetworkSpec,
  serializeRevocationRecord,
} from './records';

/** `network create`: spec with a trust anchor in etcd, network key in `keyFile` (0600, never overwritten). */
export async function createNetworkWithKey(
  client: Etcd3,
  input: Omit<CreateNetworkInput, 'trustAnchor'>,
  keyFile: string,
  clock?: () => Date,
): Promise<NetworkSpec> {
  checkName(input.name, 'name');
  const ed = await loadEd25519();
  const kp = ed.generate();
  writeNetworkKey(keyFile, input.name, kp);
  try {
    return await createNetwork(client, { ...input, trustAnchor: Buffer.from(kp.publicKey).toString('base64') }, clock, (spec) =>
      signNetworkSpec(ed, kp.secretKey, spec),
    );
  } catch (e) {
    fs.rmSync(keyFile, { force: true }); // the network was not made: its key must not linger
    throw e;
  } finally {
    kp.secretKey.fill(0);
  }
}

/** The network spec and its key, checked against each other. */
async function networkAndKey(client: Etcd3, network: string, keyFile: string): Promise<{ spec: NetworkSpec; key: NetworkKey; anchor: TrustAnchor }> {
  const ed = await loadEd25519();
  const key = readNetworkKey(keyFile, ed);
  const spec = await getNetwork(client, network);
  if (spec.trustAnchor === undefined) {
    throw new CladnetError('ECONFIG', `network: ${network} has no trust anchor (made before certificates); create a new network`, { field: 'network' });
  }
  if (spec.trustAnchor !== key.publicKey) {
    throw new CladnetError(
      'EKEY',
      `networkKey: ${keyFile} is not the key of network ${network} (its public key ${key.publicKey}, the network's trust anchor ${spec.trustAnchor})`,
      { field: 'networkKey' },
    );
  }
  const anchor = new TrustAnchor(ed, spec.name, spec.trustAnchor);
  const bad = anchor.verifySpec(spec);
  if (bad !== null) {
    key.secretKey.fill(0);
    throw new CladnetError('EKEY', `network ${network}: the spec in etcd does not verify (${bad}); ${SIGN_HINT(network)}`, { field: 'network' });
  }
  return { spec, key, anchor };
}

const SIGN_HINT = (network: string) =>
  `if it was made before specs were signed, check its values and run: cladnet network sign ${network} --network-key NET.netkey --cidr CIDR [--mtu N] [--port N]`;

export interface SignOptions {
  network: string;
  networkKeyFile: string;
  /** The values the operator vouches for; mtu and port default as in `network create`. */
  cidr: string;
  mtu?: number;
  port?: number;
  /** Write these values even when etcd holds others (else that is refused). */
  rewrite?: boolean;
  /** The signing time (the spec's serial follows it); default now. */
  now?: Date;
}

/**
 * `network sign`: signs the spec in etcd with the network key. The operator states cidr, mtu and
 * port; when etcd holds other values (an etcd writer may have changed them) the command refuses,
 * naming both, unless `rewrite`. Written only if the spec did not change meanwhile.
 */
export async function signNetwork(client: Etcd3, o: SignOptions): Promise<{ spec: NetworkSpec; rewritten: string[] }> {
  checkName(o.network, 'network');
  const ed = await loadEd25519();
  const key = readNetworkKey(o.networkKeyFile, ed);
  try {
    const k = networkKey(o.network);
    const res = await etcdCall(`read ${k}`, () => client.get(k).exec());
    const kv = res.kvs[0];
    if (!kv) throw new CladnetError('ENONET', `network ${o.network} does not exist`, { field: 'network' });
    const parsed = parseNetworkSpec(kv.value, { name: o.network });
    if (!parsed.ok) throw new CladnetError('ERECORD', `network ${o.network}: stored spec is invalid: ${parsed.error}`);
    const stored = parsed.value;
    if (stored.trustAnchor === undefined) {
      throw new CladnetError('ECONFIG', `network: ${o.network} has no trust anchor (made before certificates); create a new network`, { field: 'network' });
    }
    if (stored.trustAnchor !== key.publicKey) {
      throw new CladnetError(
        'EKEY',
        `networkKey: ${o.networkKeyFile} is not the key of network ${o.network} (its public key ${key.publicKey}, the network's trust anchor ${stored.trustAnchor})`,
        { field: 'networkKey' },
      );
    }
    const want = buildNetworkSpec({ name: o.network, cidr: o.cidr, mtu: o.mtu, port: o.port });
    const rewritten = (['cidr', 'mtu', 'port'] as const).filter((f) => want[f] !== stored[f]);
    if (rewritten.length > 0 && !o.rewrite) {
      const diff = rewritten.map((f) => `${f}: etcd has ${stored[f]}, you said ${want[f]}`).join('; ');
      throw new CladnetError('ECONFIG', `network ${o.network}: ${diff}. Refusing to sign values you did not state (pass --rewrite to write yours)`, {
        field: rewritten[0]!,
      });
    }
    // a new serial: agents that hold this spec refuse the one it replaces if it is put back
    const serial = nextSpecSerial(stored, o.now ?? new Date());
    const spec = signNetworkSpec(ed, key.secretKey, { ...stored, cidr: want.cidr, mtu: want.mtu, port: want.port, serial });
    const done = await etcdCall(`sign ${k}`, () =>
      client.if(k, 'Mod', '==', kv.mod_revision).then(client.put(k).value(serializeNetworkSpec(spec))).commit(),
    );
    if (!done.succeeded) throw new CladnetError('EETCD', `network ${o.network}: the spec changed while it was being signed; run the command again`, { transient: true });
    return { spec, rewritten };
  } finally {
    key.secretKey.fill(0);
  }
}

export interface IssueOptions {
  network: string;
  name: string;
  networkKeyFile: string;
  /** The host's X25519 public key (base64). */
  publicKey: string;
  validDays?: number;
  now?: Date;
  /** The issuer's ledger (default `<networkKeyFile>.issued`). */
  ledgerFile?: string;
  /** Called with each warning as soon as it is known, also when the issue then fails. */
  onWarning?: (warning: string) => void;
  /** Certify the host as a relay for others (`host issue --relay`). */
  relay?: boolean;
  /** Prefixes the host may route for the mesh (`host issue --routes`); none may overlap the overlay. */
  routes?: readonly string[];
  /** Security groups for the certificate (`host issue --groups`). */
  groups?: readonly string[];
}

export interface IssueResult {
  cert: HostCert;
  trustAnchor: string;
  /** The network spec the certificate was made under, verified against the network key. */
  spec: NetworkSpec;
  /** Things the operator should know: leases repaired, ledger lines or etcd records skipped. */
  warnings: string[];
}

/**
 * `host issue`: leases the host's overlay address (same name, same address) and signs its
 * certificate, never over an address that another name's valid certificate holds.
 */
export async function issueHost(client: Etcd3, o: IssueOptions): Promise<IssueResult> {
  checkName(o.name, 'name');
  checkName(o.network, 'network');
  if (!isPublicKey(o.publicKey)) {
    throw new CladnetError('ECONFIG', `publicKey: ${JSON.stringify(o.publicKey)} is not base64 of a 32-byte X25519 key`, { field: 'publicKey' });
  }
  const { spec, key, anchor } = await networkAndKey(client, o.network, o.networkKeyFile);
  const ed = await loadEd25519();
  const ledgerFile = o.ledgerFile ?? ledgerFileFor(o.networkKeyFile);
  const now = o.now ?? new Date();
  try {
    const warnings: string[] = [];
    const warn = (list: string[]) => {
      for (const w of list) o.onWarning?.(w);
      warnings.push(...list);
    };
    const routes = canonicalRoutes(o.routes ?? []);
    const overlay = parseOverlayCidr(spec.cidr);
    for (const r of routes) {
      if (overlaps(parsePrefix(r)!, overlay)) {
        throw new CladnetError('ECONFIG', `routes: ${r} overlaps the network's overlay range ${spec.cidr}`, { field: 'routes' });
      }
    }
    const view = await loadIssuerView(client, spec, anchor, ledgerFile, now.getTime());
    warn(view.warnings);
    warn(await restoreHolderLeases(client, spec, view, now.toISOString()));
    const overlayIp = await leaseOverlayIp(client, spec, o.name, o.publicKey, { reserved: reservedFor(view, o.name) });
    assertAddressFree(view, overlayIp, o.name);
    const cert = issueCert(ed, key.secretKey, {
      network: spec.name,
      name: o.name,
      publicKey: o.publicKey,
      overlayIp,
      validDays: o.validDays,
      now,
      relay: o.relay,
      routes,
      groups: o.groups,
    });
    await recordIssued(client, ledgerFile, cert);
    return { cert, trustAnchor: key.publicKey, spec, warnings };
  } finally {
    key.secretKey.fill(0);
  }
}

export interface RevokeOptions {
  network: string;
  name: string;
  networkKeyFile: string;
  /** Revoke only this certificate; default: every certificate of the host issued until now. */
  serial?: string;
  now?: Date;
  /** The issuer's ledger (default `<networkKeyFile>.issued`). */
  ledgerFile?: string;
}

/**
 * `host revoke`: writes a signed revocation and releases the host's lease.
 * Revoking one serial is refused while the host already has a valid revocation (replacing it would
 * un-revoke what it covered for agents that start later); revoking by name always covers it.
 */
export async function revokeHost(client: Etcd3, o: RevokeOptions): Promise<{ revocation: RevocationRecord; released: string[] }> {
  checkName(o.name, 'name');
  const { key, anchor } = await networkAndKey(client, o.network, o.networkKeyFile);
  const ed = await loadEd25519();
  const k = revokedKey(o.network, o.name);
  try {
    if (o.serial !== undefined) {
      const existing = await etcdCall(`read ${k}`, () => client.get(k).string());
      const parsed = existing === null ? null : parseRevocationRecord(existing, { network: o.network, name: o.name });
      if (parsed?.ok && anchor.verifyRevocation(parsed.value) === null) {
        throw new CladnetError(
          'ECONFIG',
          `serial: host ${o.name} already has a revocation (${parsed.value.serial ?? 'every certificate'} at ${parsed.value.revoked}); revoke by name (without --serial) to cover both`,
          { field: 'serial' },
        );
      }
    }
    const revocation = signRevocation(ed, key.secretKey, { network: o.network, name: o.name, serial: o.serial ?? null, now: o.now });
    const value = serializeRevocationRecord(revocation);
    checkRecordSize('revoked', value);
    appendLedger(o.ledgerFile ?? ledgerFileFor(o.networkKeyFile), { revocation });
    await etcdCall(`write ${k}`, () => client.put(k).value(value).exec());
    const released = await releaseOverlayIp(client, o.network, o.name);
    return { revocation, released };
  } finally {
    key.secretKey.fill(0);
  }
}
