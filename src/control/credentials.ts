/**
 * The files membership is made of, outside etcd:
 *
 *   NAME.netkey   the network key, JSON {version, network, publicKey, secretKey} (Ed25519, base64),
 *                 mode 0600, kept offline by the operator. Never written to etcd.
 *   host.cert     a host's certificate, JSON {version, trustAnchor, cert, spec?}: the certificate
 *                 plus the network's public key, which the agent pins (an etcd writer who rewrites
 *                 the network spec's trustAnchor is refused), and the signed network spec the
 *                 issuer verified, which a host that never ran holds etcd's against (an etcd writer
 *                 who puts back an earlier signed spec is refused). Public; mode 0644.
 *
 * Key files are created with mode 0600 and never overwritten; one that group or others can read
 * is refused.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Ed25519, SigningKeyPair } from '../crypto/sign';
import { CladnetError } from '../errors';
import { checkName } from './keys';
import { HostCert, isBase64Of, NetworkSpec, parseHostCert, parseNetworkSpec, serializeNetworkSpec } from './records';

export const NETWORK_KEY_SUFFIX = '.netkey';
export const CERT_FILE = 'host.cert';

export interface NetworkKey {
  readonly network: string;
  /** base64, 32 bytes: the trust anchor. */
  readonly publicKey: string;
  readonly secretKey: Uint8Array;
}

export interface CertFile {
  /** base64 Ed25519 public key of the network key that signed `cert`. */
  readonly trustAnchor: string;
  readonly cert: HostCert;
  /**
   * The network spec (signed by the network key) as the issuer read and verified it when it made
   * the certificate (`host issue`), or as the join token carried it. Absent in files written before
   * it existed. The agent verifies it again before it relies on it.
   */
  readonly spec?: NetworkSpec;
}

function ekey(field: string, msg: string): CladnetError {
  return new CladnetError('EKEY', `${field}: ${msg}`, { field });
}

/** Throws EKEY when `file` can be read by group or others. */
export function checkPrivateMode(file: string, field: string): void {
  const st = fs.statSync(file);
  if ((st.mode & 0o077) !== 0) {
    throw ekey(field, `${file} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`);
  }
}

/** Writes `contents` to a new file with mode 0600; refuses to overwrite (EKEY). */
export function writeSecretFile(file: string, contents: string, field: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
  try {
    fs.writeFileSync(file, contents, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw ekey(field, `${file} already exists; refusing to overwrite a key file`);
    throw ekey(field, `cannot write ${file}: ${(e as Error).message}`);
  }
  fs.chmodSync(file, 0o600); // in case the umask took bits away from 0600 or a filesystem ignored it
}

export function writeNetworkKey(file: string, network: string, kp: SigningKeyPair): void {
  const doc = {
    version: 1,
    network: checkName(network, 'network'),
    publicKey: Buffer.from(kp.publicKey).toString('base64'),
    secretKey: Buffer.from(kp.secretKey).toString('base64'),
  };
  writeSecretFile(file, `${JSON.stringify(doc, null, 2)}\n`, 'networkKey');
}

/** Reads a network key file: mode 0600 or stricter, well formed, halves consistent. */
export function readNetworkKey(file: string, ed: Ed25519): NetworkKey {
  const field = 'networkKey';
  let text: string;
  try {
    checkPrivateMode(file, field);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof CladnetError) throw e;
    throw ekey(field, `cannot read ${file}: ${(e as Error).message}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw ekey(field, `${file} is not a cladnet network key (not JSON)`);
  }
  if (typeof doc !== 'object' || doc === null || doc['version'] !== 1) throw ekey(field, `${file} is not a cladnet network key (version 1)`);
  const { network, publicKey, secretKey } = doc;
  if (typeof network !== 'string') throw ekey(field, `${file}: network is missing`);
  if (!isBase64Of(publicKey, 32)) throw ekey(field, `${file}: publicKey is not base64 of 32 bytes`);
  if (!isBase64Of(secretKey, 64)) throw ekey(field, `${file}: secretKey is not base64 of 64 bytes`);
  const sk = new Uint8Array(Buffer.from(secretKey, 'base64'));
  const derived = ed.publicKeyOf(sk);
  if (!derived || Buffer.from(derived).toString('base64') !== publicKey) {
    throw ekey(field, `${file}: secretKey does not belong to publicKey`);
  }
  return { network, publicKey, secretKey: sk };
}

export function serializeCertFile(c: CertFile): string {
  const spec = c.spec === undefined ? undefined : (JSON.parse(serializeNetworkSpec(c.spec)) as unknown);
  return `${JSON.stringify({ version: 1, trustAnchor: c.trustAnchor, cert: c.cert, spec }, null, 2)}\n`;
}

/**
 * Writes a certificate file (replacing an older one atomically: renewal). The temporary file has
 * a random name and is created with O_CREAT|O_EXCL, mode 0600: a file or symlink planted at that
 * name makes the open fail instead of being written through. Made public (0644) before the rename.
 */
export function writeCertFile(file: string, c: CertFile): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(8).toString('hex')}.tmp`);
  const { O_WRONLY, O_CREAT, O_EXCL } = fs.constants;
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL, 0o600);
  let done = false;
  try {
    fs.writeFileSync(fd, serializeCertFile(c));
    fs.fchmodSync(fd, 0o644); // a certificate is public; the umask must not decide
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
    done = true;
  } finally {
    if (!done) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed
      }
      fs.rmSync(tmp, { force: true });
    }
  }
}

/** Parses a certificate file's text; throws EKEY naming the file and field (`cert` for the setting). */
export function parseCertFile(text: string, file: string): CertFile {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw ekey('cert', `${file} is not a cladnet certificate file (not JSON)`);
  }
  if (typeof doc !== 'object' || doc === null || doc['version'] !== 1) throw ekey('cert', `${file} is not a cladnet certificate file (version 1)`);
  if (!isBase64Of(doc['trustAnchor'], 32)) throw ekey('cert', `${file}: trustAnchor is not base64 of a 32-byte key`);
  const cert = parseHostCert((doc['cert'] ?? null) as object);
  if (!cert.ok) throw ekey('cert', `${file}: cert.${cert.error}`);
  if (doc['spec'] === undefined) return { trustAnchor: doc['trustAnchor'], cert: cert.value };
  const spec = parseNetworkSpec(JSON.stringify(doc['spec']), { name: cert.value.network });
  if (!spec.ok) throw ekey('cert', `${file}: spec.${spec.error}`);
  return { trustAnchor: doc['trustAnchor'], cert: cert.value, spec: spec.value };
}

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\]|::1|localhost)$/i;

/** Of etcd endpoints ("scheme://host:port"), those a password would cross in the clear: plain http:// to anything but loopback. */
export function cleartextEndpoints(hosts: readonly string[]): string[] {
  return hosts.filter((h) => {
    let u: URL;
    try {
      u = new URL(h);
    } catch {
      return true;
    }
    return u.protocol !== 'https:' && !LOOPBACK.test(u.hostname);
  });
}

const warned = new Set<string>();

/**
 * An etcd password must not cross a network in the clear: with a user and a plain http:// endpoint
 * that is not loopback, throws EINSECURE unless `allowInsecure` (etcdAllowInsecurePassword), and
 * then warns on stderr, once per endpoint list. Returns the warning text, or null when nothing is wrong.
 */
export function checkPasswordTransport(hosts: readonly string[], hasPassword: boolean, allowInsecure: boolean): string | null {
  if (!hasPassword) return null;
  const bad = cleartextEndpoints(hosts);
  if (bad.length === 0) return null;
  const what = `the etcd password would be sent unencrypted to ${bad.join(', ')} (plain http://)`;
  if (!allowInsecure) {
    throw new CladnetError(
      'EINSECURE',
      `etcd: ${what}; use https:// endpoints (etcdCa), or a client certificate instead of a password, ` +
        'or accept the risk with --etcd-allow-insecure-password (CLADNET_ETCD_ALLOW_INSECURE_PASSWORD=true)',
      { field: 'etcd' },
    );
  }
  const text = `WARNING: ${what}: anyone on the path can read it and act as this etcd user (etcdAllowInsecurePassword is set)`;
  if (!warned.has(text)) {
    warned.add(text);
    process.emitWarning(text, { code: 'CLADNET_INSECURE_ETCD_PASSWORD' });
  }
  return text;
}

export function readCertFile(file: string): CertFile {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message;
    throw ekey('cert', `${file} ${why}; issue one with: cladnet host issue NAME --network NET --network-key FILE`);
  }
  return parseCertFile(text, file);
}
