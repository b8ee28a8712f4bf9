/**
 * writeCertFile writes through a fresh, randomly named temporary file opened with O_EXCL: nothing
 * planted in the directory (a symlink at the old predictable name) is written through, and no
 * temporary file is left behind, also when the final rename fails.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCert } from '../../src/control/cert';
import { readCertFile, writeCertFile, type CertFile } from '../../src/control/credentials';
import { loadEd25519 } from '../../src/crypto/sign';

let dir: string;
let doc: CertFile;
let n = 0;
const fresh = () => fs.mkdtempSync(path.join(dir, `d${n++}-`));

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-certfile-'));
  const ed = await loadEd25519();
  const net = ed.generate();
  const cert = issueCert(ed, net.secretKey, { network: 'demo', name: 'h1', publicKey: Buffer.alloc(32, 1).toString('base64'), overlayIp: '100.64.0.5' });
  doc = { trustAnchor: Buffer.from(net.publicKey).toString('base64'), cert };
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('writeCertFile', () => {
  it('writes the file 0644 whatever the umask, replaces it on renewal, and leaves no temporary file', () => {
    const d = fresh();
    const file = path.join(d, 'host.cert');
    const old = process.umask(0o077);
    try {
      writeCertFile(file, doc);
    } finally {
      process.umask(old);
    }
    expect(fs.statSync(file).mode & 0o777).toBe(0o644);
    expect(readCertFile(file)).toEqual(doc);
    writeCertFile(file, doc);
    expect(fs.readdirSync(d)).toEqual(['host.cert']);
  });

  it('does not write through a symlink planted at the old predictable temporary name', () => {
    const d = fresh();
    const victim = path.join(fresh(), 'victim');
    fs.writeFileSync(victim, 'untouched\n');
    const file = path.join(d, 'host.cert');
    fs.symlinkSync(victim, `${file}.tmp-${process.pid}`);
    writeCertFile(file, doc);
    expect(fs.readFileSync(victim, 'utf8')).toBe('untouched\n');
    expect(fs.lstatSync(file).isFile()).toBe(true);
    expect(readCertFile(file)).toEqual(doc);
  });

  it('removes its temporary file when the rename fails', () => {
    const d = fresh();
    const file = path.join(d, 'host.cert');
    fs.mkdirSync(file); // a directory in the way: rename(2) fails
    fs.writeFileSync(path.join(file, 'x'), '');
    expect(() => writeCertFile(file, doc)).toThrow();
    expect(fs.readdirSync(d)).toEqual(['host.cert']);
  });
});
