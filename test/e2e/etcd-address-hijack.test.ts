import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCert } from '../../src/control/cert';
import { readNetworkKey } from '../../src/control/credentials';
import { createEtcd } from '../../src/control/etcd';
import { aliveKey, hostKey, issuedKey, leaseKey } from '../../src/control/keys';
import { readLedger, ledgerFileFor } from '../../src/control/ledger';
import { TrustAnchor } from '../../src/control/cert';
import { listLeases } from '../../src/control/leases';
import { createNetworkWithKey, issueHost, revokeHost } from '../../src/control/membership';
import { getNetwork } from '../../src/control/networks';
import { Registry } from '../../src/control/registry';
import { createRootLogger } from '../../src/log';
import { HostCert, HostRecord, serializeHostCert, serializeHostRecord, serializeLeaseRecord } from '../../src/control/records';
import { loadEd25519 } from '../../src/crypto/sign';
import { CladnetError } from '../../src/errors';
import { formatIpv4, parseIpv4 } from '../../src/util/ipv4';
import { EtcdHandle, startEtcd, waitFor } from '../helpers/etcd';

/**
 * Issue 10, hole 2, at the operator's seat against a real etcd: an etcd writer (this test's own
 * client, which has no network key) rewrites or deletes leases, deletes records and fills the
 * range; `host issue` must still never certify an address that another name's valid certificate
 * holds. Each network is a /29: six usable addresses, so filling the range takes five writes.
 */

const X = (n: number) => Buffer.alloc(32, n).toString('base64');

let etcd: EtcdHandle;
let client: Etcd3;
let dir: string;
let netCount = 0;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcd({ endpoints: [etcd.endpoint] });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-hijack-'));
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface Net {
  name: string;
  keyFile: string;
  ips: string[]; // the six usable addresses
  issue(name: string, key: number, o?: { ledgerFile?: string }): ReturnType<typeof issueHost>;
}

async function newNetwork(): Promise<Net> {
  netCount++;
  const name = `hij${netCount}`;
  const base = parseIpv4(`100.64.${20 + netCount}.0`)!;
  const keyFile = path.join(dir, `${name}.netkey`);
  await createNetworkWithKey(client, { name, cidr: `${formatIpv4(base)}/29` }, keyFile);
  const ips = [1, 2, 3, 4, 5, 6].map((i) => formatIpv4(base + i));
  return {
    name,
    keyFile,
    ips,
    issue: (host, key, o = {}) => issueHost(client, { network: name, name: host, networkKeyFile: keyFile, publicKey: X(key), ...o }),
  };
}

/** What an etcd writer can do: put a lease naming anyone. */
async function forgeLease(net: string, ip: string, host: string, key = 99): Promise<void> {
  await client.put(leaseKey(net, ip)).value(serializeLeaseRecord({ version: 1, host, publicKey: X(key), created: new Date().toISOString() }));
}

/** Fills every address but `except` with leases for junk names. */
async function fillRange(n: Net, except: string): Promise<void> {
  let i = 0;
  for (const ip of n.ips) if (ip !== except) await forgeLease(n.name, ip, `junk-${i++}`);
}

async function leaseHolder(net: string, ip: string): Promise<string | null | undefined> {
  const e = (await listLeases(client, net)).get(ip);
  return e === undefined ? undefined : (e.record?.host ?? null);
}

async function refusal(p: Promise<unknown>): Promise<CladnetError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e, 'host issue should have been refused').toBeInstanceOf(CladnetError);
  return e as CladnetError;
}

function hostRecordFor(cert: HostCert): HostRecord {
  return {
    version: 1,
    name: cert.name,
    network: cert.network,
    overlayIp: cert.overlayIp,
    publicKey: cert.publicKey,
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 1,
    updated: new Date().toISOString(),
    session: '0123456789abcdef',
    cert,
  };
}

describe('host issue never certifies an address another valid certificate holds', () => {
  it("a lease rewritten to name the next host: that host gets another address, the lease goes back to its holder", async () => {
    const n = await newNetwork();
    const h1 = await n.issue('h1', 1);
    await forgeLease(n.name, h1.cert.overlayIp, 'newbie', 9);

    const nb = await n.issue('newbie', 9);
    console.log(`rewritten lease: h1 holds ${h1.cert.overlayIp}; newbie got ${nb.cert.overlayIp}; warnings: ${nb.warnings.join(' | ')}`);
    expect(nb.cert.overlayIp).not.toBe(h1.cert.overlayIp);
    expect(n.ips).toContain(nb.cert.overlayIp);
    expect(await leaseHolder(n.name, h1.cert.overlayIp)).toBe('h1');
    expect(await leaseHolder(n.name, nb.cert.overlayIp)).toBe('newbie');
    expect(nb.warnings).toContain(`lease ${h1.cert.overlayIp} named newbie; restored to h1 (certificate ${h1.cert.serial}, issued ${h1.cert.issued})`);

    // The old host renews and keeps its address; the newcomer renews and keeps its own.
    expect((await n.issue('h1', 1)).cert.overlayIp).toBe(h1.cert.overlayIp);
    expect((await n.issue('newbie', 9)).cert.overlayIp).toBe(nb.cert.overlayIp);
  });

  it('a lease deleted and the rest of the range filled: host issue refuses (EEXHAUSTED) rather than hand out the address', async () => {
    const n = await newNetwork();
    const h1 = await n.issue('h1', 1);
    const ip = h1.cert.overlayIp;
    await client.delete().key(leaseKey(n.name, ip));
    await fillRange(n, ip);

    const e = await refusal(n.issue('newbie', 9));
    console.log(`deleted lease, full range: ${e.message} [${e.code}]`);
    expect(e.code).toBe('EEXHAUSTED');
    expect(e.message).toBe(`network ${n.name} (${n.ips[0]!.replace(/\.1$/, '.0')}/29) has no free overlay address: 6 of 6 leased`);
    expect(await leaseHolder(n.name, ip)).toBe('h1'); // given back to its holder
    const anchor = new TrustAnchor(await loadEd25519(), n.name, h1.trustAnchor);
    expect(readLedger(ledgerFileFor(n.keyFile), anchor).certs.map((c) => c.name)).toEqual(['h1']); // nothing for newbie

    // Once a junk lease goes, newbie gets that address, still not h1's.
    await client.delete().key(leaseKey(n.name, n.ips.find((x) => x !== ip)!));
    const nb = await n.issue('newbie', 9);
    expect(nb.cert.overlayIp).not.toBe(ip);
  });

  // Each source of certificates alone keeps the address: the ledger (etcd holds nothing of h1),
  // the signed /issued/ record (another operator's machine, without this ledger), the host
  // record of a running agent. With none of them, the same steps do hand the address out: the
  // attack is real, and the sources are what stop it.
  it.each([
    ['the local ledger alone', { ledger: true, issued: false, host: false }, false],
    ['the signed /issued/ record alone', { ledger: false, issued: true, host: false }, false],
    ['the certified host record alone', { ledger: false, issued: false, host: true }, false],
    ['nothing (control: the address is handed out)', { ledger: false, issued: false, host: false }, true],
  ])('a deleted lease, the range filled, and the holder known from %s', async (_what, keep, handedOut) => {
    const n = await newNetwork();
    const h1 = await n.issue('h1', 1);
    const ip = h1.cert.overlayIp;
    if (keep.host) await client.put(hostKey(n.name, 'h1')).value(serializeHostRecord(hostRecordFor(h1.cert)));
    if (!keep.issued) await client.delete().key(issuedKey(n.name, 'h1'));
    else expect(await client.get(issuedKey(n.name, 'h1')).string()).toBe(serializeHostCert(h1.cert));
    const ledgerFile = keep.ledger ? ledgerFileFor(n.keyFile) : path.join(dir, `${n.name}-other-machine.issued`);
    await client.delete().key(leaseKey(n.name, ip));
    await fillRange(n, ip);

    const r = await n.issue('newbie', 9, { ledgerFile }).then(
      (v) => ({ ip: v.cert.overlayIp, code: null as string | null }),
      (e: unknown) => ({ ip: null, code: (e as CladnetError).code }),
    );
    console.log(`holder known from ${_what}: newbie ${r.ip === null ? `refused [${r.code}]` : `got ${r.ip}`} (h1 holds ${ip})`);
    if (handedOut) {
      expect(r.ip).toBe(ip);
    } else {
      expect(r).toEqual({ ip: null, code: 'EEXHAUSTED' });
      expect(await leaseHolder(n.name, ip)).toBe('h1');
    }
  });

  it("a revoked certificate frees its address, even when an etcd writer deletes the revocation (the ledger has it)", async () => {
    const n = await newNetwork();
    const h1 = await n.issue('h1', 1);
    const ip = h1.cert.overlayIp;
    const { released } = await revokeHost(client, { network: n.name, name: 'h1', networkKeyFile: n.keyFile });
    expect(released).toEqual([ip]);
    await client.delete().key(`/cladnet/v1/networks/${n.name}/revoked/h1`);
    await fillRange(n, ip);
    const nb = await n.issue('newbie', 9);
    expect(nb.cert.overlayIp).toBe(ip);
  });

  it('an etcd writer cannot reserve addresses with certificates of its own making; they are skipped with a warning', async () => {
    const n = await newNetwork();
    const ed = await loadEd25519();
    const attacker = ed.generate();
    const target = n.ips[2]!;
    const forged = issueCert(ed, attacker.secretKey, { network: n.name, name: 'squatter', publicKey: X(7), overlayIp: target });
    await client.put(issuedKey(n.name, 'squatter')).value(serializeHostCert(forged));
    await client.put(hostKey(n.name, 'squatter')).value(serializeHostRecord(hostRecordFor(forged)));
    await fillRange(n, target);
    const nb = await n.issue('newbie', 9);
    expect(nb.cert.overlayIp).toBe(target);
    expect(nb.warnings.some((w) => w.startsWith(`etcd: skipped ${issuedKey(n.name, 'squatter')}: cert.signature: not signed by this network's key`))).toBe(true);
  });

  it('a tampered ledger line is skipped with a warning naming the line; the good lines still hold their addresses', async () => {
    const n = await newNetwork();
    const h1 = await n.issue('h1', 1);
    const file = ledgerFileFor(n.keyFile);
    fs.appendFileSync(file, `${JSON.stringify({ version: 1, cert: { ...h1.cert, name: 'h9' } })}\n`);
    await client.delete().key(issuedKey(n.name, 'h1'));
    await client.delete().key(leaseKey(n.name, h1.cert.overlayIp));
    await fillRange(n, h1.cert.overlayIp);
    const e = await refusal(n.issue('newbie', 9));
    expect(e.code).toBe('EEXHAUSTED');
    // The refusal came before any warning could be printed; a successful issue shows them.
    await client.delete().key(leaseKey(n.name, n.ips.find((x) => x !== h1.cert.overlayIp)!));
    const nb = await n.issue('newbie', 9);
    expect(nb.warnings).toContainEqual(expect.stringMatching(new RegExp(`^ledger: skipped ${file.replace(/[.]/g, '\\.')}:2: cert.signature: not signed`)));
  });
});

describe('agents decide by certificates and remember them (Registry against a real etcd)', () => {
  it("an etcd writer deletes the holder's record: a registry that saw it keeps refusing the newer certificate, and so does a fresh one with its cache file", async () => {
    const n = await newNetwork();
    const spec = await getNetwork(client, n.name);
    const h2 = await n.issue('h2', 2);
    const ip = h2.cert.overlayIp;
    // The operator signs a second certificate for h2's address by hand (host issue would refuse).
    const ed = await loadEd25519();
    const key = readNetworkKey(n.keyFile, ed);
    const second = issueCert(ed, key.secretKey, { network: n.name, name: 'thief', publicKey: X(66), overlayIp: ip, now: new Date(Date.parse(h2.cert.issued) + 1000) });
    key.secretKey.fill(0);
    const put = async (cert: HostCert) => {
      await client.put(hostKey(n.name, cert.name)).value(serializeHostRecord(hostRecordFor(cert)));
      await client.put(aliveKey(n.name, cert.name)).value('{}');
    };
    await put(h2.cert);
    await forgeLease(n.name, ip, 'thief'); // the lease favours the newcomer; it must not matter

    const opened: { reg: Registry; c: Etcd3 }[] = [];
    const observe = async (cacheFile?: string) => {
      const c = createEtcd({ endpoints: [etcd.endpoint] });
      const lines: { msg: string }[] = [];
      const log = createRootLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as { msg: string }) });
      const reg = new Registry({ client: c, network: spec, self: 'obs', log, cacheFile });
      opened.push({ reg, c });
      let peers: string[] = [];
      await reg.watch((p) => (peers = [...p.keys()]));
      return { reg, lines, peers: () => peers };
    };
    try {
      const cacheFile = path.join(dir, `${n.name}-obs-peers.json`);
      const seen = await observe(cacheFile);
      await waitFor(() => seen.peers().includes('h2'), 3_000, 'h2 as a peer');
      await put(second);
      await waitFor(() => seen.reg.addressConflicts().length === 1, 3_000, 'the conflict');
      const want = [{ overlayIp: ip, winner: { name: 'h2', serial: h2.cert.serial, issued: h2.cert.issued }, loser: { name: 'thief', serial: second.serial, issued: second.issued } }];
      expect(seen.reg.addressConflicts()).toEqual(want);
      expect(seen.peers()).toEqual(['h2']);
      expect(seen.reg.stats().addressConflicts).toBe(1);
      expect(seen.lines.filter((l) => l.msg === 'two valid certificates claim one overlay address; the earlier one holds it')).toHaveLength(1);

      // The etcd writer deletes h2's record (and its liveness).
      await client.delete().key(hostKey(n.name, 'h2'));
      await client.delete().key(aliveKey(n.name, 'h2'));
      await waitFor(() => seen.reg.etcdView('h2')?.record === 'absent', 3_000, "h2's record gone from etcd");
      await new Promise((r) => setTimeout(r, 300));
      // Membership is the certificate (roster.ts): h2 stays, on its last valid record.
      expect(seen.peers()).toEqual(['h2']);
      expect(seen.reg.etcdView('h2')).toEqual({ record: 'absent', alive: false });
      expect(seen.reg.addressConflicts()).toEqual(want);

      // A registry that never saw h2 (no cache) accepts the newcomer: the memory is what holds.
      const fresh = await observe();
      await waitFor(() => fresh.peers().includes('thief'), 3_000, 'a fresh registry to accept thief');
      // One that starts from the first one's cache file refuses it.
      await seen.reg.close();
      const restarted = await observe(cacheFile);
      await new Promise((r) => setTimeout(r, 300));
      expect(restarted.peers()).toEqual(['h2']); // the cached member, on its cached record
      expect(restarted.reg.addressConflicts()).toEqual(want);
      console.log(`deleted holder record: remembered by the registry and its cache; a registry without either took thief (${fresh.peers().join(',')})`);
    } finally {
      for (const o of opened) {
        await o.reg.close();
        o.c.close();
      }
    }
  });
});
