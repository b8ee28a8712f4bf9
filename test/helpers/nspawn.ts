import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { run, runOk, type RunResult } from '../../src/testbed/run';

/**
 * A Debian VM for boot tests: a debootstrapped bookworm rootfs (built once, cached), booted with
 * systemd as PID 1 by systemd-nspawn, on a fresh overlay per boot, in a test-bed network namespace,
 * with a cloud-init NoCloud seed (user-data, meta-data) in /var/lib/cloud/seed/nocloud.
 *
 * Cache: $CLADNET_ROOTFS_CACHE or /var/cache/cladnet-test/rootfs-bookworm-<hash of the package
 * list> (about 370 MB). Built with `debootstrap --variant=minbase --include=...` into a temporary
 * directory and renamed into place, so an interrupted build leaves nothing that looks finished;
 * build.json beside it says how long the build took.
 *
 * Known pitfalls (issue 12): `--keep-unit --register=no` (there is no systemd on the host to
 * register with, and the test's own scope is kept), `systemd.firstboot=off` (else firstboot asks
 * for a locale and root password on the console), and `--volatile=overlay` is refused for `/`,
 * so the overlay is mounted here. With --network-namespace-path, nspawn keeps no CAP_NET_ADMIN
 * unless --capability says so.
 */
export const ROOTFS_SUITE = 'bookworm';
/** cloud-init's python3-cryptography depends on a virtual package debootstrap cannot resolve: python3-cffi-backend provides it. */
export const ROOTFS_PACKAGES = ['systemd', 'systemd-sysv', 'dbus', 'cloud-init', 'python3-cffi-backend', 'iproute2', 'iputils-ping'] as const;
const MIRROR = 'http://deb.debian.org/debian';

export function rootfsDir(): string {
  const base = process.env['CLADNET_ROOTFS_CACHE'] ?? '/var/cache/cladnet-test';
  const key = createHash('sha256').update(`${ROOTFS_SUITE} ${ROOTFS_PACKAGES.join(',')}`).digest('hex').slice(0, 12);
  return path.join(base, `rootfs-${ROOTFS_SUITE}-${key}`);
}

/** The cached rootfs, built first when missing; `builtMs` is the build time when it was built now. */
export async function ensureRootfs(): Promise<{ dir: string; builtMs: number | null }> {
  const dir = rootfsDir();
  if (fs.existsSync(path.join(dir, 'build.json'))) return { dir, builtMs: null };
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const tmp = `${dir}.partial-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  const t0 = Date.now();
  const r = await run(['debootstrap', '--variant=minbase', `--include=${ROOTFS_PACKAGES.join(',')}`, ROOTFS_SUITE, tmp, MIRROR], { timeoutMs: 15 * 60_000 });
  if (r.code !== 0) {
    let log = '';
    try {
      log = fs.readFileSync(path.join(tmp, 'debootstrap', 'debootstrap.log'), 'utf8').split('\n').slice(-30).join('\n');
    } catch {
      /* no log */
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    throw new Error(`debootstrap failed (exit ${r.code}):\n${r.stderr.slice(-3000)}\n${log}`);
  }
  const builtMs = Date.now() - t0;
  // Apt's downloaded .debs are not needed to boot.
  fs.rmSync(path.join(tmp, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
  fs.mkdirSync(path.join(tmp, 'var', 'cache', 'apt', 'archives', 'partial'), { recursive: true });
  fs.writeFileSync(path.join(tmp, 'build.json'), JSON.stringify({ suite: ROOTFS_SUITE, packages: ROOTFS_PACKAGES, builtMs, at: new Date().toISOString() }) + '\n');
  fs.renameSync(tmp, dir);
  return { dir, builtMs };
}

export interface BootOptions {
  readonly rootfs: string;
  /** A directory of the test's own (upper/work/merged live here); removed by stop(). */
  readonly workDir: string;
  /** Container (machine) name, also its hostname until cloud-init sets one. */
  readonly machine: string;
  /** Network namespace name (/run/netns/NAME) the container joins. */
  readonly netns: string;
  readonly userData: string;
  readonly metaData: string;
  /** Host paths bound read-only at the same or the given path. */
  readonly bindRo: readonly { readonly src: string; readonly dst?: string }[];
}

export interface Container {
  /** The merged root as the host sees it (its files can be read directly). */
  readonly root: string;
  readonly proc: ChildProcess;
  readonly consoleLog: string;
  /** The container's PID 1 as the host sees it. */
  leader(): number;
  /** Runs `cmd` in every namespace of the container (nsenter -a). */
  exec(cmd: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** `systemctl show UNIT -p ...` as a record. */
  show(unit: string, props: readonly string[]): Promise<Record<string, string>>;
  /** The last lines of a file inside the container, for failure messages. */
  tail(file: string, lines?: number): string;
  /** Halts the container (SIGTERM to nspawn, SIGKILL after `timeoutMs`), unmounts and removes the overlay. */
  stop(timeoutMs?: number): Promise<void>;
}

/** Boots `rootfs` on a fresh overlay with the seed in place. */
export async function bootContainer(o: BootOptions): Promise<Container> {
  const upper = path.join(o.workDir, 'upper');
  const work = path.join(o.workDir, 'work');
  const root = path.join(o.workDir, 'root');
  for (const d of [upper, work, root]) fs.mkdirSync(d, { recursive: true });
  await runOk(['mount', '-t', 'overlay', 'overlay', '-o', `lowerdir=${o.rootfs},upperdir=${upper},workdir=${work}`, root]);
  let proc: ChildProcess | undefined;
  const consoleLog = path.join(o.workDir, 'console.log');

  const unmount = async () => {
    const r = await run(['umount', root]);
    if (r.code !== 0) await run(['umount', '-l', root]);
  };
  const stop = async (timeoutMs = 20_000) => {
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const p = proc;
      const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
      p.kill('SIGTERM'); // nspawn asks the container's systemd to halt
      const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
      await exited;
      clearTimeout(t);
    }
    await unmount();
    fs.rmSync(o.workDir, { recursive: true, force: true });
  };

  try {
    // The NoCloud seed, and a datasource list so ds-identify does not go looking for clouds. The
    // minbase rootfs has no `locales` package (a cloud image has): cc_locale is told to leave the
    // locale alone, else its update-locale fails and cloud-init reports an error of its own.
    const seed = path.join(root, 'var', 'lib', 'cloud', 'seed', 'nocloud');
    fs.mkdirSync(seed, { recursive: true });
    fs.writeFileSync(path.join(seed, 'user-data'), o.userData, { mode: 0o600 });
    fs.writeFileSync(path.join(seed, 'meta-data'), o.metaData);
    fs.writeFileSync(path.join(root, 'etc', 'cloud', 'cloud.cfg.d', '90-cladnet-test.cfg'), 'datasource_list: [NoCloud, None]\nlocale: false\n');
    const binds = o.bindRo.map((b) => `--bind-ro=${b.src}${b.dst && b.dst !== b.src ? `:${b.dst}` : ''}`);
    const args = [
      ...['-D', root, '--keep-unit', '--register=no', `--machine=${o.machine}`],
      `--network-namespace-path=/run/netns/${o.netns}`,
      // A joined namespace does not count as private networking for nspawn's capability set
      // (systemd 252 drops CAP_NET_ADMIN then; TUNSETIFF fails with EPERM): ask for it.
      '--capability=CAP_NET_ADMIN',
      ...binds,
      ...['-b', 'systemd.firstboot=off'],
    ];
    const out = fs.openSync(consoleLog, 'a');
    proc = spawn('systemd-nspawn', args, { stdio: ['ignore', out, out] });
    fs.closeSync(out);
  } catch (e) {
    await stop();
    throw e;
  }
  const p = proc;

  const leader = (): number => {
    const kids = fs.readFileSync(`/proc/${p.pid}/task/${p.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    if (kids.length !== 1) throw new Error(`systemd-nspawn ${p.pid} has ${kids.length} children (want 1: the container's init)`);
    return Number(kids[0]);
  };
  const exec = (cmd: readonly string[], timeoutMs = 20_000) => run(['nsenter', '-t', String(leader()), '-a', ...cmd], { timeoutMs });
  const show = async (unit: string, props: readonly string[]) => {
    const r = await exec(['systemctl', 'show', unit, ...props.map((x) => `--property=${x}`)]);
    if (r.code !== 0) throw new Error(`systemctl show ${unit}: ${r.stderr}`);
    return Object.fromEntries(
      r.stdout
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
  };
  const tail = (file: string, lines = 40) => {
    try {
      return fs.readFileSync(path.join(root, file), 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch (e) {
      return `(${file}: ${(e as Error).message})`;
    }
  };
  return { root, proc: p, consoleLog, leader, exec, show, tail, stop };
}
