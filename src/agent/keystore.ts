/**
 * The host's X25519 identity in the state dir: `private.key` (base64, mode 0600). Created on first
 * start, reused on every restart, so peers keep knowing the host by the same public key. A key
 * file that others can read is refused rather than used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CladnetError } from '../errors';
import { generateKeyPair, publicKeyOf, type KeyPair } from '../crypto/keys';

export const KEY_FILE = 'private.key';

export async function loadOrCreateKeyPair(stateDir: string): Promise<{ keys: KeyPair; created: boolean }> {
  try {
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new CladnetError('ESTATE', `state dir ${stateDir}: ${(e as Error).message}`, { field: 'stateDir' });
  }
  const file = path.join(stateDir, KEY_FILE);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file);
  } catch {
    st = undefined;
  }
  if (st) {
    if ((st.mode & 0o077) !== 0) {
      throw new CladnetError(
        'EKEY',
        `${file} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`,
      );
    }
    const text = fs.readFileSync(file, 'utf8').trim();
    const priv = Buffer.from(text, 'base64');
    if (priv.length !== 32 || priv.toString('base64') !== text) {
      throw new CladnetError('EKEY', `${file} does not hold a base64 32-byte X25519 private key`);
    }
    const privateKey = new Uint8Array(priv);
    return { keys: { privateKey, publicKey: await publicKeyOf(privateKey) }, created: false };
  }
  const keys = await generateKeyPair();
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, Buffer.from(keys.privateKey).toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
  fs.renameSync(tmp, file);
  return { keys, created: true };
}
