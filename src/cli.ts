#!/usr/bin/env node
/**
 * The `cladnet` command. Commands only parse, call into the agent or control plane, and print;
 * errors print their message (and code) without a stack trace and exit 1.
 */
import { Command, Option } from 'commander';
import { loadAgentConfig } from './config/config';
import { CladnetError } from './errors';
import { createRootLogger } from './log';

const DEFAULT_SOCKET = '/run/cladnet/cladnet.sock';
/** How to reach etcd: endpoints, TLS files, user and password (the agent's settings of the same names). */
interface EtcdFlags {
  etcd: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  etcdUser?: string;
  etcdPassword?: string;
  etcdPasswordFile?: string;
  etcdAllowInsecurePassword?: boolean;
}

/** Adds --etcd and the etcd TLS/auth flags (each also read from its CLADNET_* variable). */
function etcdOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--etcd <urls>', 'etcd endpoints, comma separated').env('CLADNET_ETCD').default('http://127.0.0.1:2379'))
    .addOption(new Option('--etcd-ca <file>', 'CA bundle (PEM) to verify etcd\'s TLS certificate').env('CLADNET_ETCD_CA'))
    .addOption(new Option('--etcd-cert <file>', 'client certificate (PEM) for etcd').env('CLADNET_ETCD_CERT'))
    .addOption(new Option('--etcd-key <file>', 'client certificate key (PEM) for etcd').env('CLADNET_ETCD_KEY'))
    .addOption(new Option('--etcd-user <name>', 'etcd user').env('CLADNET_ETCD_USER'))
    .addOption(new Option('--etcd-password <password>', 'etcd password (prefer --etcd-password-file)').env('CLADNET_ETCD_PASSWORD'))
    .addOption(new Option('--etcd-password-file <file>', 'file holding the etcd password').env('CLADNET_ETCD_PASSWORD_FILE'))
    .addOption(
      new Option('--etcd-allow-insecure-password', 'send the etcd password over plain http:// to a non-loopback endpoint anyway').env(
        'CLADNET_ETCD_ALLOW_INSECURE_PASSWORD',
      ),
    );
}

function urls(s: string): string[] {
  return s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
}

async function withEtcd<T>(o: EtcdFlags, fn: (client: import('etcd3').Etcd3) => Promise<T>): Promise<T> {
  const { createEtcd, etcdOptionsFrom } = await import('./control/etcd');
  const client = createEtcd(etcdOptionsFrom({ ...o, etcd: urls(o.etcd) }));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

function print(obj: unknown, json: boolean, text: () => string): void {
  process.stdout.write((json ? JSON.stringify(obj, null, 2) : text()) + '\n');
}

export function buildProgram(): Command {
  const program = new Command('cladnet')
    .description('Cloud Adaptive Network: an encrypted full-mesh overlay for VMs across clouds')
    .version(require('../package.json').version as string)
    .showHelpAfterError();

  program
    .command('agent')
    .description('run the agent (foreground; for systemd)')
    .option('--config <file>', 'JSON config file', process.env.CLADNET_CONFIG)
    .option('--etcd <urls>', 'etcd endpoints, comma separated')
    .option('--network <name>', 'network to join')
    .option('--name <host>', 'this host\'s name in the network (default: hostname)')
    .option('--interface <ifname>', 'TUN interface name (default cladnet0)')
    .option('--listen-port <port>', 'UDP port (default: the network\'s port)')
    .option('--state-dir <dir>', 'keys and state (default /var/lib/cladnet)')
    .option('--socket <path>', `status socket (default ${DEFAULT_SOCKET})`)
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (default info)')
    .option('--batch <n>', 'packets per data-plane batch (default 64)')
    .option('--workers <n>', 'data-plane worker threads, each with a TUN queue and a UDP socket: auto|1-16 (default auto: 1 on 2 cores or fewer, else cores-1 up to 4)')
    .option('--crypto <backend>', 'AEAD backend: auto|ffi|native|wasm (default auto)')
    .option('--offload <bool>', 'TUN segmentation/checksum offloads (default true)')
    .option('--udp-offload <bool>', 'UDP GSO on send and GRO on receive: runs of datagrams to one peer cross the kernel as one (default true)')
    .option('--advertise <endpoints>', 'endpoints to publish instead of interface addresses (ip or ip:port, comma separated)')
    .option('--stun <servers>', 'STUN servers (ip:port, comma separated) to learn our public address from (default none)')
    .option('--metadata <provider>', 'ask cloud instance metadata for our public IPv4: off|aws|gcp|azure|auto (default off)')
    .option('--relay [bool]', 'relay encrypted traffic for peers that cannot reach each other directly (default false)')
    .option('--metrics-listen <addr>', 'serve Prometheus metrics on GET /metrics at this TCP address, e.g. 127.0.0.1:9821 (default off)')
    .option('--advertise-routes <cidrs>', 'prefixes this host routes for the mesh (comma separated; each inside its certificate\'s --routes)')
    .option('--snat-routes [bool]', 'source-NAT overlay traffic into the advertised prefixes (LANs that cannot route the overlay back; default false)')
    .option('--cert <file>', 'this host\'s certificate from `cladnet host issue` (default <state-dir>/host.cert)')
    .option('--token <token>', 'join token from `cladnet token create`: used only when --cert does not exist yet, to enrol this host (prefer --token-file)')
    .option('--token-file <file>', 'file (mode 0600) holding the join token; wiped and removed once the host has enrolled')
    .option('--etcd-ca <file>', 'CA bundle (PEM) to verify etcd\'s TLS certificate')
    .option('--etcd-cert <file>', 'client certificate (PEM) for etcd')
    .option('--etcd-key <file>', 'client certificate key (PEM) for etcd')
    .option('--etcd-user <name>', 'etcd user')
    .option('--etcd-password <password>', 'etcd password (prefer --etcd-password-file)')
    .option('--etcd-password-file <file>', 'file holding the etcd password')
    .option('--etcd-allow-insecure-password [bool]', 'send the etcd password over plain http:// to a non-loopback endpoint anyway (default false)')
    .action(async (opts: Record<string, unknown>) => {
      // First of all: restart this process (same pid) with the agent's Node flags, unless it has them.
      (await import('./agent/node-flags')).reexecWithAgentFlags();
      // Next, while Node's own helper threads are the only others: they yield the CPU to every other thread.
      const helpers = (await import('./agent/helper-threads')).scheduleNodeHelpers(process.env);
      const { config, ...flags } = opts;
      const cfg = loadAgentConfig({ file: config as string | undefined, env: process.env, flags });
      const log = createRootLogger(cfg.logLevel);
      helpers.report(log);
      // systemd (Type=notify): READY/STATUS/WATCHDOG/STOPPING, src/agent/service.ts. The variables
      // came through the re-exec above unchanged, and the pid WATCHDOG_PID names is still ours.
      const service = await import('./agent/service');
      const watchdog = service.watchdogMs(process.env, process.pid);
      const notify = (await import('./os/notify')).openNotify(process.env);
      const { Agent } = await import('./agent/agent');
      const agent = new Agent(cfg, log, undefined, service.heartbeatMs(watchdog));
      const notifier =
        notify &&
        new service.ServiceNotifier({
          notify,
          watchdogMs: watchdog,
          summary: () => agent.serviceSummary(),
          heartbeat: () => agent.dataplane?.heartbeat() ?? 0,
          log,
        });
      if (process.env.CLADNET_TEST_HOOKS === '1') {
        // Tests only: SIGUSR2 wedges the data-plane worker for CLADNET_TEST_STALL_MS (watchdog tests).
        process.on('SIGUSR2', () => agent.dataplane?.stallForTest(Number(process.env.CLADNET_TEST_STALL_MS ?? 3_000)));
      }
      let signalled = false;
      const onSignal = (sig: NodeJS.Signals) => {
        if (signalled) return;
        signalled = true;
        notifier?.stopping();
        log.info({ signal: sig }, 'signal received');
        agent.stop().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
      try {
        await agent.start();
        if (notifier) {
          // "Ready" includes a status socket that answers: ask it, as `cladnet status` would.
          const { fetchStatus } = await import('./status/client');
          await fetchStatus(cfg.socket);
          if (!signalled) notifier.ready();
        }
      } catch (e) {
        notifier?.stopping();
        await agent.stop();
        throw e;
      }
    });

  const network = program.command('network').description('manage networks in etcd');
  etcdOptions(
    network
      .command('create <name>')
      .description('create a network with an overlay CIDR and its network key (the trust anchor)')
      .requiredOption('--cidr <cidr>', 'overlay range, private or CGNAT (e.g. 100.64.0.0/24)')
      .option('--mtu <n>', 'overlay MTU (default 1420)')
      .option('--port <n>', 'default UDP port (default 51820)')
      .option('--key-out <file>', 'where to write the network key (default ./NAME.netkey; never overwritten)'),
  )
    .option('--json', 'print JSON')
    .action(async (name: string, o: EtcdFlags & { cidr: string; mtu?: string; port?: string; keyOut?: string; json?: boolean }) => {
      const { createNetworkWithKey } = await import('./control/membership');
      const { NETWORK_KEY_SUFFIX } = await import('./control/credentials');
      const num = (v: string | undefined, field: string) => {
        if (v === undefined) return undefined;
        if (!/^\d+$/.test(v)) throw new CladnetError('ECONFIG', `${field}: "${v}" is not a number`, { field });
        return Number(v);
      };
      const input = { name, cidr: o.cidr, mtu: num(o.mtu, 'mtu'), port: num(o.port, 'port') };
      const keyFile = o.keyOut ?? `./${name}${NETWORK_KEY_SUFFIX}`;
      const spec = await withEtcd(o, (c) => createNetworkWithKey(c, input, keyFile));
      print({ ...spec, networkKeyFile: keyFile }, !!o.json, () =>
        [
          `created network ${spec.name}: ${spec.cidr}, mtu ${spec.mtu}, port ${spec.port}`,
          `trust anchor ${spec.trustAnchor}`,
          `network key written to ${keyFile} (mode 0600). Keep it offline: whoever holds it can admit and`,
          `revoke hosts (cladnet host issue / host revoke). It is not stored in etcd and cannot be recovered.`,
        ].join('\n'),
      );
    });
  etcdOptions(
    network
      .command('sign <name>')
      .description('sign the network spec (cidr, mtu, port) with the network key under a new serial: a spec made before specs were signed, or new values (--rewrite)')
      .requiredOption('--network-key <file>', 'the network key from `network create` (mode 0600)')
      .requiredOption('--cidr <cidr>', 'the overlay range you vouch for; refused when etcd holds another')
      .option('--mtu <n>', 'the overlay MTU you vouch for (default 1420)')
      .option('--port <n>', 'the default UDP port you vouch for (default 51820)')
      .option('--rewrite', 'write the stated values even when etcd holds others'),
  )
    .option('--json', 'print JSON')
    .action(async (name: string, o: EtcdFlags & { networkKey: string; cidr: string; mtu?: string; port?: string; rewrite?: boolean; json?: boolean }) => {
      const { signNetwork } = await import('./control/membership');
      const num = (v: string | undefined, field: string) => {
        if (v === undefined) return undefined;
        if (!/^\d+$/.test(v)) throw new CladnetError('ECONFIG', `${field}: "${v}" is not a number`, { field });
        return Number(v);
      };
      const r = await withEtcd(o, (c) =>
        signNetwork(c, { network: name, networkKeyFile: o.networkKey, cidr: o.cidr, mtu: num(o.mtu, 'mtu'), port: num(o.port, 'port'), rewrite: o.rewrite }),
      );
      print(r.spec, !!o.json, () =>
        [
          `signed network ${r.spec.name}: ${r.spec.cidr}, mtu ${r.spec.mtu}, port ${r.spec.port}, serial ${r.spec.serial}`,
          ...(r.rewritten.length > 0 ? [`rewrote ${r.rewritten.join(', ')} (etcd held other values)`] : []),
        ].join('\n'),
      );
    });
  etcdOptions(network.command('list').description('list networks'))
    .option('--json', 'print JSON')
    .action(async (o: EtcdFlags & { json?: boolean }) => {
      const { listNetworks } = await import('./control/networks');
      const list = await withEtcd(o, (c) => listNetworks(c));
      print(list, !!o.json, () =>
        list.length === 0 ? 'no networks' : list.map((n) => `${n.name}\t${n.cidr}\tmtu ${n.mtu}\tport ${n.port}`).join('\n'),
      );
    });
  etcdOptions(network.command('show <name>').description('show a network and its hosts'))
    .option('--json', 'print JSON')
    .action(async (name: string, o: EtcdFlags & { json?: boolean }) => {
      const { getNetwork } = await import('./control/networks');
      const { listHosts } = await import('./control/hosts');
      const [spec, hosts] = await withEtcd(o, async (c) => [await getNetwork(c, name), await listHosts(c, name)] as const);
      print({ network: spec, hosts }, !!o.json, () =>
        [
          `${spec.name}: ${spec.cidr}, mtu ${spec.mtu}, port ${spec.port}, created ${spec.created}`,
          `  trust anchor ${spec.trustAnchor ?? 'none (made before certificates: agents refuse this network)'}`,
          `  ${spec.signature ? 'spec signed by the network key (agents verify it)' : `spec unsigned: agents refuse it; run cladnet network sign ${spec.name} --network-key FILE --cidr ${spec.cidr} --mtu ${spec.mtu} --port ${spec.port}`}`,
          ...hosts.map((h) => `  ${h.name}\t${h.overlayIp}\t${h.alive ? 'alive' : 'gone'}\t${h.endpoints.join(',')}`),
        ].join('\n'),
      );
    });
  etcdOptions(network.command('delete <name>').description('delete a network and everything under it'))
    .action(async (name: string, o: EtcdFlags) => {
      const { deleteNetwork } = await import('./control/networks');
      await withEtcd(o, (c) => deleteNetwork(c, name));
      process.stdout.write(`deleted network ${name}\n`);
    });
  etcdOptions(
    network
      .command('recommend')
      .description('suggest overlay ranges that no host network or existing network uses')
      .option('--prefix-len <n>', 'size of the suggested ranges (default /16)'),
  )
    .option('--json', 'print JSON')
    .action(async (o: EtcdFlags & { json?: boolean; prefixLen?: string }) => {
      const { recommend } = await import('./control/plan');
      const prefixLen = o.prefixLen === undefined ? undefined : Number(o.prefixLen);
      const r = await withEtcd(o, (c) => recommend(c, { prefixLen }));
      print(r, !!o.json, () =>
        [
          `in use: ${r.used.join(', ') || 'nothing yet'}`,
          `free /${r.prefixLen} ranges: ${r.candidates.join(', ') || 'none'}`,
        ].join('\n'),
      );
    });

  const host = program.command('host').description('admit and revoke hosts (needs the network key)');
  etcdOptions(
    host
      .command('issue <name>')
      .description('lease an overlay address for a host and sign its certificate with the network key')
      .requiredOption('--network <net>', 'the network')
      .requiredOption('--network-key <file>', 'the network key from `network create` (mode 0600); certificates are also recorded in <file>.issued')
      .option('--public-key <base64>', 'the host\'s X25519 public key; without it a key pair is made and written with the certificate')
      .option('--out <path>', 'with --public-key: certificate file or directory (default ./NAME.cert); without: directory for private.key and host.cert (default ./NAME)')
      .option('--valid-days <n>', 'certificate lifetime in days (default 365)')
      .option('--relay', 'certify the host to relay for others (peers ignore a relay flag its certificate lacks)')
      .option('--routes <cidrs>', 'certify the host to route these prefixes for the mesh (comma separated; see agent --advertise-routes)')
      .option('--groups <names>', 'security groups the host belongs to, comma separated (network policies name them)'),
  )
    .option('--json', 'print JSON')
    .action(async (name: string, o: EtcdFlags & { network: string; networkKey: string; publicKey?: string; out?: string; validDays?: string; relay?: boolean; routes?: string; groups?: string; json?: boolean }) => {
      const routes = o.routes === undefined ? undefined : o.routes.split(',').map((r) => r.trim()).filter(Boolean);
      const { issueHostFiles } = await import('./cli/host-issue');
      const validDays = o.validDays === undefined ? undefined : Number(o.validDays);
      if (validDays !== undefined && !(Number.isFinite(validDays) && validDays > 0)) {
        throw new CladnetError('ECONFIG', `validDays: "${o.validDays}" is not a positive number of days`, { field: 'validDays' });
      }
      const r = await withEtcd(o, (c) =>
        issueHostFiles(c, {
          ...{ name, network: o.network, networkKeyFile: o.networkKey, publicKey: o.publicKey, out: o.out, validDays, relay: o.relay, routes },
          groups: o.groups === undefined ? undefined : urls(o.groups),
          onWarning: (w) => process.stderr.write(`cladnet: warning: ${w}\n`),
        }),
      );
      print(r, !!o.json, () =>
        [
          `issued a certificate for ${r.cert.name} in network ${r.cert.network}: overlay ${r.cert.overlayIp}, serial ${r.cert.serial}, valid until ${r.cert.notAfter}`,
          ...(r.cert.routes ? [`routes: ${r.cert.routes.join(', ')}`] : []),
          `certificate: ${r.certFile}`,
          ...(r.privateKeyFile ? [`private key: ${r.privateKeyFile} (mode 0600${r.keyCreated ? ', new' : ', kept'}); ship both to the host's state dir`] : []),
        ].join('\n'),
      );
    });
  etcdOptions(
    host
      .command('revoke <name>')
      .description('revoke a host\'s certificates (signed with the network key) and release its address')
      .requiredOption('--network <net>', 'the network')
      .requiredOption('--network-key <file>', 'the network key from `network create` (mode 0600)')
      .option('--serial <serial>', 'revoke only this certificate (default: every certificate of the host issued until now)'),
  )
    .option('--json', 'print JSON')
    .action(async (name: string, o: EtcdFlags & { network: string; networkKey: string; serial?: string; json?: boolean }) => {
      const { revokeHost } = await import('./control/membership');
      const r = await withEtcd(o, (c) => revokeHost(c, { name, network: o.network, networkKeyFile: o.networkKey, serial: o.serial }));
      print(r, !!o.json, () =>
        `revoked ${name} in network ${o.network} (${r.revocation.serial === null ? `every certificate issued until ${r.revocation.revoked}` : `certificate ${r.revocation.serial}`}); released ${r.released.join(', ') || 'no lease'}`,
      );
    });

  const policy = program.command('policy').description('the network policy (security groups), signed by the network key');
  etcdOptions(
    policy
      .command('set <file>')
      .description('sign the rules in FILE ({"rules": [...]}, JSON) with the network key and store them as the network policy')
      .requiredOption('--network <net>', 'the network')
      .requiredOption('--network-key <file>', 'the network key from `network create` (mode 0600)')
      .option('--serial <n>', 'serial of the new policy (default: one more than the policy in etcd)'),
  )
    .option('--json', 'print JSON')
    .action(async (file: string, o: EtcdFlags & { network: string; networkKey: string; serial?: string; json?: boolean }) => {
      const { policySet, renderPolicy } = await import('./cli/policy');
      const serial = o.serial === undefined ? undefined : Number(o.serial);
      const p = await withEtcd(o, (c) => policySet(c, { network: o.network, networkKeyFile: o.networkKey, file, serial }));
      print(p, !!o.json, () => renderPolicy({ network: o.network, policy: p, error: null }));
    });
  etcdOptions(policy.command('show').description('print the network policy in etcd and whether it verifies').requiredOption('--network <net>', 'the network'))
    .option('--json', 'print JSON')
    .action(async (o: EtcdFlags & { network: string; json?: boolean }) => {
      const { policyShow, renderPolicy } = await import('./cli/policy');
      const s = await withEtcd(o, (c) => policyShow(c, o.network));
      print(s, !!o.json, () => renderPolicy(s));
    });

  const token = program.command('token').description('join tokens: let new hosts enrol themselves (needs the network key to make or revoke)');
  etcdOptions(
    token
      .command('create')
      .description('make a scoped, expiring, limited-use join token signed by the network key (the token is a secret)')
      .requiredOption('--network <net>', 'the network')
      .requiredOption('--network-key <file>', 'the network key from `network create` (mode 0600)')
      .option('--name <pattern>', 'host names it may enrol; * stands for any run of name characters (default *)')
      .option('--uses <n>', 'how many hosts may enrol with it (default 1)')
      .option('--ttl <duration>', 'how long hosts may enrol with it: 90s, 30m, 2h, 7d (default 1h, at most 30d)')
      .option('--valid-days <n>', 'lifetime of each host certificate made under it (default 365)')
      .option('--groups <names>', 'security groups the hosts enrolling with it get, comma separated')
      .option('--out <file>', 'write the token to this new file (mode 0600) instead of stdout'),
  )
    .option('--json', 'print JSON')
    .action(
      async (o: EtcdFlags & { network: string; networkKey: string; name?: string; uses?: string; ttl?: string; validDays?: string; groups?: string; out?: string; json?: boolean }) => {
        const { createToken } = await import('./control/token');
        const { writeSecretFile } = await import('./control/credentials');
        const int = (v: string | undefined, field: string) => {
          if (v === undefined) return undefined;
          if (!/^\d+$/.test(v)) throw new CladnetError('ECONFIG', `${field}: "${v}" is not a whole number`, { field });
          return Number(v);
        };
        const input = { network: o.network, networkKeyFile: o.networkKey, names: o.name, uses: int(o.uses, 'uses'), ttl: o.ttl, certDays: int(o.validDays, 'validDays') };
        const groups = o.groups === undefined ? {} : { groups: urls(o.groups) };
        const r = await withEtcd(o, (c) => createToken(c, { ...input, ...groups }));
        const g = r.grant;
        const about = `token ${g.id}: network ${g.network}, names ${g.names}, ${g.uses} use(s), hosts may enrol until ${g.notAfter}, certificates valid ${g.certDays} day(s)`;
        if (o.out !== undefined) {
          writeSecretFile(o.out, `${r.token}\n`, 'out');
          print({ grant: g, tokenFile: o.out }, !!o.json, () => `${about}\ntoken written to ${o.out} (mode 0600)`);
          return;
        }
        process.stderr.write(`cladnet: ${about}\ncladnet: the token below is a secret until it is used up or expires: pass it to the agent as a 0600 file (--token-file)\n`);
        print({ grant: g, token: r.token }, !!o.json, () => r.token);
      },
    );
  etcdOptions(
    token
      .command('revoke <id>')
      .description('revoke a join token (signed with the network key): no host enrols with it any more')
      .requiredOption('--network <net>', 'the network')
      .requiredOption('--network-key <file>', 'the network key from `network create` (mode 0600)')
      .option('--all', 'also revoke the certificates of hosts that already enrolled with it (default: keep them)'),
  )
    .option('--json', 'print JSON')
    .action(async (id: string, o: EtcdFlags & { network: string; networkKey: string; all?: boolean; json?: boolean }) => {
      const { revokeToken } = await import('./control/token');
      const r = await withEtcd(o, (c) => revokeToken(c, { network: o.network, networkKeyFile: o.networkKey, token: id, all: o.all }));
      print(r, !!o.json, () =>
        [
          `revoked token ${id} in network ${o.network} at ${r.revocation.revoked}`,
          r.kept.length === 0
            ? 'no host keeps a certificate made under it'
            : `kept (enrolled before the revocation; check these are yours, else cladnet host revoke NAME): ${r.kept.map((c) => `use ${c.use}: ${c.name} ${c.overlayIp} (${c.serial})`).join(', ')}`,
        ].join('\n'),
      );
    });
  etcdOptions(token.command('list').description('list the join tokens of a network, their uses and revocations').requiredOption('--network <net>', 'the network'))
    .option('--json', 'print JSON')
    .action(async (o: EtcdFlags & { network: string; json?: boolean }) => {
      const { listTokens } = await import('./control/token');
      const r = await withEtcd(o, (c) => listTokens(c, o.network));
      for (const s of r.skipped) process.stderr.write(`cladnet: warning: skipped ${s}\n`);
      print(r.tokens, !!o.json, () =>
        r.tokens.length === 0
          ? 'no tokens'
          : r.tokens
              .map((t) => {
                const state = t.revoked ? `revoked ${t.revoked}` : t.expired ? 'expired' : t.used.length >= t.grant.uses ? 'used up' : 'open';
                const used = t.used.map((u) => `${u.use}:${u.name}`).join(',') || '-';
                return `${t.grant.id}\t${t.grant.names}\t${t.used.length}/${t.grant.uses} used (${used})\tuntil ${t.grant.notAfter}\t${state}`;
              })
              .join('\n'),
      );
    });

  program
    .command('cloud-init')
    .description('print #cloud-config user data that installs, configures and starts cladnet on a VM (or write one file per VM of a fleet)')
    .option('--name <host>', 'one VM: its name in the network')
    .option('--names <list>', 'a fleet: names, comma separated')
    .option('--count <n>', 'a fleet of N VMs named by --pattern')
    .option('--pattern <pattern>', "with --count: names with {n} counting from 1, e.g. 'web-{n}'")
    .option('--network <net>', 'the network to join')
    .option('--etcd <urls>', 'etcd endpoints as the VMs reach them, comma separated')
    .option('--etcd-ca <file>', 'CA bundle (PEM) of etcd\'s TLS certificate: /etc/cladnet/etcd-ca.pem on the VM')
    .option('--etcd-cert <file>', 'etcd client certificate (PEM): /etc/cladnet/etcd-client.pem')
    .option('--etcd-key <file>', 'etcd client key (PEM): /etc/cladnet/etcd-client.key, 0600')
    .option('--etcd-user <name>', 'etcd user (with --etcd-password-file)')
    .option('--etcd-password-file <file>', 'etcd password: /etc/cladnet/etcd.pw, 0600')
    .option('--bundle <dir>', 'enrollment from `cladnet host issue NAME --out DIR`: DIR for one VM, DIR/NAME for each VM of a fleet')
    .option('--token-file <file>', 'enrollment by a join token from `cladnet token create` (when the agent supports it)')
    .option('--install <how>', 'present (cladnet already on the image at the unit\'s path) | tarball=URL | tarball=FILE (from `npm pack`; a FILE is embedded)')
    .option('--node <how>', 'Node 20: nodesource (NodeSource apt repository; Debian 12) | debian (the distribution\'s nodejs; Debian 13+) | present', 'nodesource')
    .option('--agent-config <file>', 'more agent settings (JSON, as /etc/cladnet/config.json) for every VM')
    .option('--out <path>', 'write here instead of stdout: a file (one VM) or a directory, DIR/NAME.yaml per VM (a fleet; required)')
    .action(async (o: import('./cli/cloud-init').CloudInitFlags) => {
      const { cloudInitCommand } = await import('./cli/cloud-init');
      const r = cloudInitCommand(o);
      for (const w of r.warnings) process.stderr.write(`cladnet: ${w}\n`);
      if (r.stdout !== undefined) process.stdout.write(r.stdout);
      else process.stderr.write(`cladnet: wrote ${r.files.length === 1 ? r.files[0] : `${r.files.length} files (${r.files[0]} ...)`} (mode 0600)\n`);
    });

  program
    .command('status')
    .description('show this host\'s agent: peers, paths, traffic, drops')
    .option('--socket <path>', 'status socket', process.env.CLADNET_SOCKET ?? DEFAULT_SOCKET)
    .option('--json', 'print the status document (version 1)')
    .option('--metrics', 'print Prometheus metrics (text format 0.0.4) instead')
    .action(async (o: { socket: string; json?: boolean; metrics?: boolean }) => {
      const { fetchMetrics, fetchStatus, renderStatus } = await import('./status/client');
      if (o.metrics) {
        process.stdout.write(await fetchMetrics(o.socket));
        return;
      }
      const doc = await fetchStatus(o.socket);
      print(doc, !!o.json, () => renderStatus(doc));
    });

  program
    .command('ping <peer>')
    .description('ping a peer (name or overlay IP) with the agent\'s own ping/pong on its current path; exit 1 if nothing answers, 2 for an unknown peer')
    .option('-c, --count <n>', 'pings to send (default: until interrupted)')
    .option('-i, --interval <seconds>', 'between pings (default 1)')
    .option('--timeout <seconds>', 'wait for each reply (default 1)')
    .option('--socket <path>', 'status socket', process.env.CLADNET_SOCKET ?? DEFAULT_SOCKET)
    .option('--json', 'print the replies and summary as JSON')
    .action(async (peer: string, o: { count?: string; interval?: string; timeout?: string; socket: string; json?: boolean }) => {
      process.exitCode = await (await import('./cli/ping')).pingCommand(peer, o);
    });

  program
    .command('netcheck')
    .description('measure afresh: reflexive address, NAT kind, round trips to STUN servers and peers, relays')
    .option('--timeout <seconds>', 'how long the agent measures at most (default 3)')
    .option('--socket <path>', 'status socket', process.env.CLADNET_SOCKET ?? DEFAULT_SOCKET)
    .option('--json', 'print JSON')
    .action(async (o: { socket: string; json?: boolean; timeout?: string }) => {
      await (await import('./cli/netcheck')).netcheckCommand(o);
    });

  program
    .command('cert')
    .description('host certificates and join tokens')
    .command('print <file>')
    .description('show a host certificate or join token (never key material); exit 1 when its signature does not verify')
    .option('--network-key <file>', 'check the signature against this network key (its public half)')
    .option('--trust-anchor <base64>', 'check the signature against this trust anchor (the network key\'s public half)')
    .option('--json', 'print JSON')
    .action(async (file: string, o: { json?: boolean; networkKey?: string; trustAnchor?: string }) => {
      process.exitCode = await (await import('./cli/cert-print')).certPrintCommand(file, o);
    });

  program
    .command('stun-server')
    .description('answer STUN binding requests (RFC 5389) so agents behind NAT learn their public endpoint')
    .requiredOption('--listen <ip:port>', 'UDP address to listen on, e.g. 0.0.0.0:3478')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent', 'info')
    .action(async (o: { listen: string; logLevel: string }) => {
      const { stunServerCommand } = await import('./cli/stun-server');
      await stunServerCommand(o);
    });

  etcdOptions(
    program
      .command('dashboard')
      .description('serve a live topology page of a network: hosts, links by path, RTT matrix (read-only etcd access)')
      .addOption(new Option('--listen <ip:port>', 'HTTP address').env('CLADNET_DASHBOARD_LISTEN').default('127.0.0.1:8080'))
      .addOption(new Option('--network <net>', 'the network to show').env('CLADNET_NETWORK').makeOptionMandatory())
      .addOption(new Option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent').env('CLADNET_LOG_LEVEL').default('info')),
  ).action(async (o: import('./cli/dashboard').DashboardFlags) => {
    const { dashboardCommand } = await import('./cli/dashboard');
    await dashboardCommand(o);
  });

  program
    .command('demo')
    .description('a local demo: etcd and three hosts in network namespaces (the last behind a NAT), meshed, one of them moved (root)')
    .option('--hosts <n>', 'number of hosts', '3')
    .action(async (o: { hosts: string }) => {
      const { runDemo } = await import('./demo/demo');
      await runDemo({ hosts: Number(o.hosts) });
    });

  return program;
}

/** Runs the command line (bin/cladnet.js calls this after its Node version check). */
export function main(argv: readonly string[]): void {
  buildProgram()
    .parseAsync([...argv])
    .catch((e: unknown) => {
      if (e instanceof CladnetError) process.stderr.write(`cladnet: ${e.message} [${e.code}]\n`);
      else process.stderr.write(`cladnet: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
      process.exit(1);
    });
}

if (require.main === module) main(process.argv);
