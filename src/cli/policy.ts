/**
 * `cladnet policy set FILE` and `cladnet policy show`: the network policy (security groups,
 * src/control/policy.ts) in etcd. `set` signs the file's rules with the network key under the
 * next serial (one more than the policy in etcd, whether or not that one verifies, and at least
 * the Unix time in seconds) and writes
 * it only if the key did not change meanwhile; `show` prints the policy in etcd and whether it
 * verifies against the network's trust anchor.
 */
import * as fs from 'node:fs';
import type { Etcd3 } from 'etcd3';
import { TrustAnchor } from '../control/cert';
import { readNetworkKey } from '../control/credentials';
import { etcdCall } from '../control/etcd';
import { checkName, policyKey } from '../control/keys';
import { getNetwork } from '../control/networks';
import { parsePolicy, parsePolicyFile, serializePolicy, signPolicy, type NetworkPolicy } from '../control/policy';
import { loadEd25519 } from '../crypto/sign';
import { CladnetError } from '../errors';

export interface PolicySetOptions {
  network: string;
  networkKeyFile: string;
  file: string;
  /** Explicit serial (must be above the one in etcd); default: that one + 1. */
  serial?: number;
  now?: Date;
}

/** The stored value's serial when it parses, else 0 (a garbled value is overwritten). */
function storedSerial(value: Buffer | undefined, network: string): number {
  if (value === undefined) return 0;
  const p = parsePolicy(value, { network });
  if (p.ok) return p.value.serial;
  const m = /"serial"\s*:\s*(\d{1,15})/.exec(value.toString('utf8'));
  return m ? Number(m[1]) : 0;
}

export async function policySet(client: Etcd3, o: PolicySetOptions): Promise<NetworkPolicy> {
  checkName(o.network, 'network');
  let text: string;
  try {
    text = fs.readFileSync(o.file, 'utf8');
  } catch (e) {
    throw new CladnetError('EPOLICY', `${o.file}: cannot read: ${(e as Error).message}`, { field: 'file' });
  }
  const rules = parsePolicyFile(text, o.file);
  const ed = await loadEd25519();
  const key = readNetworkKey(o.networkKeyFile, ed);
  try {
    const spec = await getNetwork(client, o.network);
    if (spec.trustAnchor !== key.publicKey) {
      throw new CladnetError('EKEY', `networkKey: ${o.networkKeyFile} is not the key of network ${o.network} (trust anchor ${spec.trustAnchor ?? 'none'})`, {
        field: 'networkKey',
      });
    }
    const k = policyKey(o.network);
    const res = await etcdCall(`read ${k}`, () => client.get(k).exec());
    const kv = res.kvs[0];
    const held = storedSerial(kv?.value, o.network);
    if (o.serial !== undefined && !(Number.isSafeInteger(o.serial) && o.serial > held)) {
      throw new CladnetError('EPOLICY', `serial: ${o.serial} is not above the serial in etcd (${held}); agents would ignore it`, { field: 'serial' });
    }
    // Default: the next serial, and at least the time in seconds, so a policy set after the key was
    // deleted (agents keep the last one they applied) is still newer than that one.
    const now = o.now ?? new Date();
    const serial = o.serial ?? Math.max(held + 1, Math.floor(now.getTime() / 1000));
    const policy = signPolicy(ed, key.secretKey, { network: o.network, serial, rules, now });
    const value = serializePolicy(policy);
    const done = await etcdCall(`write ${k}`, () =>
      client
        .if(k, 'Mod', '==', kv ? kv.mod_revision : 0)
        .then(client.put(k).value(value))
        .commit(),
    );
    if (!done.succeeded) throw new CladnetError('EETCD', `${k} changed while the policy was being signed; run the command again`, { transient: true });
    return policy;
  } finally {
    key.secretKey.fill(0);
  }
}

export interface PolicyShow {
  network: string;
  policy: NetworkPolicy | null;
  /** null: verifies against the network's trust anchor; else why not (or why it does not parse). */
  error: string | null;
}

export async function policyShow(client: Etcd3, network: string): Promise<PolicyShow> {
  checkName(network, 'network');
  const spec = await getNetwork(client, network);
  const k = policyKey(network);
  const res = await etcdCall(`read ${k}`, () => client.get(k).exec());
  const kv = res.kvs[0];
  if (!kv) return { network, policy: null, error: null };
  const p = parsePolicy(kv.value, { network });
  if (!p.ok) return { network, policy: null, error: p.error };
  if (spec.trustAnchor === undefined) return { network, policy: p.value, error: 'the network has no trust anchor' };
  const anchor = new TrustAnchor(await loadEd25519(), network, spec.trustAnchor);
  return { network, policy: p.value, error: anchor.verifyPolicy(p.value) };
}

export function renderPolicy(s: PolicyShow): string {
  if (s.policy === null) return s.error === null ? `network ${s.network}: no policy (every member reaches every member)` : `network ${s.network}: policy INVALID: ${s.error}`;
  const p = s.policy;
  const lines = [
    `network ${s.network}: policy serial ${p.serial}, issued ${p.issued}, ${s.error === null ? 'signed by the network key' : `INVALID (agents ignore it): ${s.error}`}`,
    `${p.rules.length} rule(s); anything else is denied (replies to allowed flows pass):`,
    ...p.rules.map((r, i) => `  [${i}]${r.id ? ` ${r.id}` : ''}: ${r.from} -> ${r.to} ${r.proto}${r.ports ? ` ${r.ports}` : ''}`),
  ];
  return lines.join('\n');
}
