/**
 * The operator's side of membership, for `cladnet network create`, `host issue` and `host revoke`:
 *
 * 1. create:  a fresh Ed25519 network key; its public half goes into the network spec as the
 *             trust anchor, its secret half into a 0600 file (written first, removed again if the
 *             network cannot be created), never into etcd.
 * 2. issue:   the network key must be private (0600), well formed and the network's anchor; the host
 *             gets (or keeps) its overlay address lease, and a certificate binding name, X25519 key
 *             and address, signed by the network key.
 * 3. revoke:  a signed revocation under /revoked/<name>, then the host's lease is released. An etcd
 *             writer without the network key can neither forge nor alter either.
 */
import * as fs from 'node:fs';
import type { Etcd3 } from 'etcd3';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import { issueCert, signRevocation, TrustAnchor } from './cert';
import { readNetworkKey, writeNetworkKey, type NetworkKey } from './credentials';
import { etcdCall } from './etcd';
import { checkName, revokedKey } from './keys';
import { leaseOverlayIp, releaseOverlayIp } from './leases';
import { createNetwork, getNetwork, type CreateNetworkInput } from './networks';
import { checkRecordSize, HostCert, isPublicKey, NetworkSpec, parseRevocationRecord, RevocationRecord, serializeRevocationRecord } from './records';

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
    return await createNetwork(client, { ...input, trustAnchor: Buffer.from(kp.publicKey).toString('base64') }, clock);
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
  return { spec, key, anchor: new TrustAnchor(ed, spec.name, spec.trustAnchor) };
}

export interface IssueOptions {
  network: string;
  name: string;
  networkKeyFile: string;
  /** The host's X25519 public key (base64). */
  publicKey: string;
  validDays?: number;
  now?: Date;
}

/** `host issue`: leases the host's overlay address (same name, same address) and signs its certificate. */
export async function issueHost(client: Etcd3, o: IssueOptions): Promise<{ cert: HostCert; trustAnchor: string }> {
  checkName(o.name, 'name');
  checkName(o.network, 'network');
  if (!isPublicKey(o.publicKey)) {
    throw new CladnetError('ECONFIG', `publicKey: ${JSON.stringify(o.publicKey)} is not base64 of a 32-byte X25519 key`, { field: 'publicKey' });
  }
  const { spec, key } = await networkAndKey(client, o.network, o.networkKeyFile);
  const ed = await loadEd25519();
  try {
    const overlayIp = await leaseOverlayIp(client, spec, o.name, o.publicKey);
    const cert = issueCert(ed, key.secretKey, {
      network: spec.name,
      name: o.name,
      publicKey: o.publicKey,
      overlayIp,
      validDays: o.validDays,
      now: o.now,
    });
    return { cert, trustAnchor: key.publicKey };
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
    await etcdCall(`write ${k}`, () => client.put(k).value(value).exec());
    const released = await releaseOverlayIp(client, o.network, o.name);
    return { revocation, released };
  } finally {
    key.secretKey.fill(0);
  }
}
