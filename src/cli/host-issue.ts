/**
 * `cladnet host issue`: the files it writes around `issueHost` (src/control/membership.ts).
 *
 * - With `--public-key` (the host made its own key): only the certificate file, at `--out`
 *   (a file, or a directory that gets host.cert; default ./NAME.cert).
 * - Without: a bundle the agent uses as its state dir, `--out DIR` (default ./NAME):
 *   DIR/private.key (X25519, 0600; an existing one is kept, so re-issuing renews) and DIR/host.cert.
 *   This is what cloud-init ships to /var/lib/cladnet.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { loadOrCreateKeyPair, KEY_FILE } from '../agent/keystore';
import { loadEd25519 } from '../crypto/sign';
import { CERT_FILE, readNetworkKey, writeCertFile } from '../control/credentials';
import { issueHost } from '../control/membership';
import type { HostCert } from '../control/records';
import { checkName } from '../control/keys';

export interface IssueFilesOptions {
  name: string;
  network: string;
  networkKeyFile: string;
  publicKey?: string;
  out?: string;
  validDays?: number;
  onWarning?: (warning: string) => void;
  relay?: boolean;
  /** Prefixes the host may route for the mesh (`--routes`). */
  routes?: readonly string[];
  /** Security groups written into the certificate (`--groups web,db`). */
  groups?: string[];
}

export interface IssueFilesResult {
  cert: HostCert;
  trustAnchor: string;
  certFile: string;
  privateKeyFile?: string;
  keyCreated?: boolean;
  /** Leases repaired, ledger lines or etcd records skipped (see issueHost). */
  warnings: string[];
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export async function issueHostFiles(client: Etcd3, o: IssueFilesOptions): Promise<IssueFilesResult> {
  checkName(o.name, 'name');
  if (o.publicKey !== undefined) {
    const out = o.out ?? `./${o.name}.cert`;
    const certFile = isDir(out) ? path.join(out, CERT_FILE) : out;
    const { cert, trustAnchor, spec, warnings } = await issueHost(client, { ...o, publicKey: o.publicKey });
    writeCertFile(certFile, { trustAnchor, cert, spec });
    return { cert, trustAnchor, certFile, warnings };
  }
  const dir = o.out ?? `./${o.name}`;
  // The network key first (mode, shape), so a refusal leaves no new host key behind.
  readNetworkKey(o.networkKeyFile, await loadEd25519()).secretKey.fill(0);
  // Refuses a group/world-readable private.key that is already there (EKEY).
  const { keys, created } = await loadOrCreateKeyPair(dir);
  const publicKey = Buffer.from(keys.publicKey).toString('base64');
  keys.privateKey.fill(0);
  const keyFile = path.join(dir, KEY_FILE);
  const certFile = path.join(dir, CERT_FILE);
  try {
    const { cert, trustAnchor, spec, warnings } = await issueHost(client, { ...o, publicKey });
    writeCertFile(certFile, { trustAnchor, cert, spec });
    return { cert, trustAnchor, certFile, privateKeyFile: keyFile, keyCreated: created, warnings };
  } catch (e) {
    if (created) fs.rmSync(keyFile, { force: true });
    throw e;
  }
}
