/**
 * The network policy (security groups, issue 15): a document signed by the network key and kept
 * in etcd at /cladnet/v1/networks/<net>/policy (keys.ts). Writing to etcd grants nothing the
 * network key did not sign: agents apply only a policy that verifies against their pinned trust
 * anchor, never one older than the newest they hold (`serial`), and a deleted key changes nothing.
 *
 *   { "version": 1, "network": "demo", "serial": 3, "issued": "2026-12-02T19:00:00.000Z",
 *     "rules": [ { "id": "web-db", "from": "group:web", "to": "group:db", "proto": "tcp", "ports": "5432" },
 *                { "from": "group:web", "to": "group:db", "proto": "icmp" } ],
 *     "signature": "..." }
 *
 * Rules only allow. `from`: "any", "host:NAME", "group:NAME" or an IPv4 CIDR (which matches IPv4
 * packets only; the others match a host's IPv4 and IPv6 overlay addresses alike); `to`: "any",
 * "host:NAME" or "group:NAME"; `proto`: tcp, udp, icmp or any; `ports` (tcp/udp only): "N" or
 * "N-M", absent for every port. No policy: every member reaches every member. With one, a
 * packet no rule allows is dropped by the host receiving it, except replies to flows that host
 * started (src/dataplane/policy.ts). Groups come from the certificates (`host issue --groups`).
 *
 * This file: the document's shape, canonical bytes, signing, the holder that applies newer
 * verified documents only, and the compilation for one host (pure).
 */
import type { Ed25519 } from '../crypto/sign';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { formatPrefix, parseIpv4, parsePrefix } from '../util/ipv4';
import type { CompiledPolicy, CompiledRule } from '../dataplane/policy';
import { PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../dataplane/policy';
import { checkName, isValidName, policyKey } from './keys';
import { isBase64Of, isValidGroupName, type HostCert, type Parsed } from './records';

export const POLICY_LABEL = 'cladnet network policy v1\n';
/** Rules one policy may hold. */
export const MAX_RULES = 1024;
/** Largest stored policy value, bytes (1024 long rules fit with room). */
export const POLICY_MAX_BYTES = 256 * 1024;

export type PolicyProto = 'tcp' | 'udp' | 'icmp' | 'any';

export interface PolicyRule {
  /** Optional label shown in status beside the rule's index (a name: a-z, 0-9, '-'). */
  id?: string;
  from: string;
  to: string;
  proto: PolicyProto;
  ports?: string;
}

export interface NetworkPolicy {
  version: 1;
  network: string;
  /** Increases with every new policy: an agent never replaces a policy by one with a lower or equal serial. */
  serial: number;
  issued: string; // ISO 8601
  rules: PolicyRule[];
  signature: string; // base64 Ed25519 by the network key over canonicalPolicy
}

export type UnsignedPolicy = Omit<NetworkPolicy, 'signature'>;

const utf8 = new TextEncoder();

class PolicyError extends Error {}

function fail(field: string, msg: string): never {
  throw new PolicyError(`${field}: ${msg}`);
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function checkSelector(v: unknown, field: string, cidrOk: boolean): string {
  if (typeof v !== 'string') fail(field, `expected a string, got ${show(v)}`);
  if (v === 'any') return v;
  const m = /^(host|group):(.*)$/.exec(v);
  if (m) {
    if (!(m[1] === 'host' ? isValidName(m[2]) : isValidGroupName(m[2]))) fail(field, `${show(m[2])} is not a valid ${m[1]} name`);
    return v;
  }
  if (cidrOk && /^[0-9./]+$/.test(v)) {
    const p = v.includes('/') ? parsePrefix(v) : parseIpv4(v) === null ? null : parsePrefix(`${v}/32`);
    if (p === null) fail(field, `${show(v)} is not an IPv4 CIDR with no host bits set (e.g. 100.64.0.0/10)`);
    return formatPrefix(p);
  }
  fail(field, `${show(v)} is not ${cidrOk ? '"any", "host:NAME", "group:NAME" or an IPv4 CIDR' : '"any", "host:NAME" or "group:NAME"'}`);
}

function checkPorts(v: unknown, field: string): string {
  const s = typeof v === 'number' ? String(v) : v;
  const m = typeof s === 'string' ? /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(s) : null;
  const lo = m ? Number(m[1]) : NaN;
  const hi = m ? Number(m[2] ?? m[1]) : NaN;
  if (!(lo >= 0 && hi <= 65535 && lo <= hi)) fail(field, `${show(v)} is not a port or a range "LO-HI" within 0-65535`);
  return lo === hi ? String(lo) : `${lo}-${hi}`;
}

function checkRule(o: unknown, i: number): PolicyRule {
  const f = `rules[${i}]`;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) fail(f, `expected an object, got ${show(o)}`);
  const r = o as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!['id', 'from', 'to', 'proto', 'ports'].includes(k)) fail(`${f}.${k}`, 'unknown field');
  const proto = r['proto'] ?? 'any';
  if (proto !== 'tcp' && proto !== 'udp' && proto !== 'icmp' && proto !== 'any') fail(`${f}.proto`, `${show(proto)} is not tcp, udp, icmp or any`);
  const rule: PolicyRule = { from: checkSelector(r['from'], `${f}.from`, true), to: checkSelector(r['to'], `${f}.to`, false), proto };
  if (r['id'] !== undefined) {
    if (!isValidName(r['id'])) fail(`${f}.id`, `${show(r['id'])} is not a valid id (1-63 of a-z, 0-9, '-')`);
    rule.id = r['id'];
  }
  if (r['ports'] !== undefined) {
    if (proto !== 'tcp' && proto !== 'udp') fail(`${f}.ports`, `ports need proto tcp or udp, not ${proto}`);
    rule.ports = checkPorts(r['ports'], `${f}.ports`);
  }
  return { id: rule.id, from: rule.from, to: rule.to, proto: rule.proto, ports: rule.ports };
}

/** The rules of a policy file or document: an array of at most MAX_RULES rules, ids unique. */
function checkRules(v: unknown): PolicyRule[] {
  if (!Array.isArray(v)) fail('rules', `expected an array, got ${show(v)}`);
  if (v.length > MAX_RULES) fail('rules', `${v.length} rules, more than ${MAX_RULES}`);
  const rules = v.map(checkRule);
  const ids = new Set<string>();
  rules.forEach((r, i) => {
    if (r.id === undefined) return;
    if (ids.has(r.id)) fail(`rules[${i}].id`, `${show(r.id)} is used twice`);
    ids.add(r.id);
  });
  return rules;
}

function guard<T>(f: () => T): Parsed<T> {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    if (e instanceof PolicyError) return { ok: false, error: e.message };
    throw e;
  }
}

function jsonObject(raw: string | Buffer | object): Record<string, unknown> {
  let o: unknown = raw;
  if (typeof raw === 'string' || Buffer.isBuffer(raw)) {
    const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
    if (size > POLICY_MAX_BYTES) fail('size', `policy is ${size} bytes, more than ${POLICY_MAX_BYTES}`);
    try {
      o = JSON.parse(raw.toString());
    } catch {
      fail('json', 'not valid JSON');
    }
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) fail('json', `expected a JSON object, got ${show(o)}`);
  return o as Record<string, unknown>;
}

/** Validates a stored policy (shape only; the signature is TrustAnchor.verifyPolicy's business). */
export function parsePolicy(raw: string | Buffer | object, expect: { network?: string } = {}): Parsed<NetworkPolicy> {
  return guard(() => {
    const o = jsonObject(raw);
    if (o['version'] !== 1) fail('version', `expected 1, got ${show(o['version'])}`);
    const network = o['network'];
    if (!isValidName(network)) fail('network', `${show(network)} is not a valid name`);
    if (expect.network !== undefined && network !== expect.network) fail('network', `${show(network)} does not match the key (${show(expect.network)})`);
    const serial = o['serial'];
    if (!(typeof serial === 'number' && Number.isSafeInteger(serial) && serial >= 1)) fail('serial', `${show(serial)} is not a positive integer`);
    const issued = o['issued'];
    if (typeof issued !== 'string' || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/.test(issued) || Number.isNaN(Date.parse(issued))) {
      fail('issued', `${show(issued)} is not an ISO 8601 time`);
    }
    const signature = o['signature'];
    // canonical base64 only: other spellings of the same bytes would be the same policy under another text
    if (!isBase64Of(signature, 64)) fail('signature', 'not base64 of 64 bytes');
    const p: NetworkPolicy = { version: 1, network, serial, issued, rules: checkRules(o['rules']), signature };
    return Object.freeze(p);
  });
}

/** The rules of a policy file an operator writes (`cladnet policy set FILE`): {"rules": [...]}; throws EPOLICY naming the field. */
export function parsePolicyFile(text: string, file: string): PolicyRule[] {
  const r = guard(() => checkRules(jsonObject(text)['rules']));
  if (!r.ok) throw new CladnetError('EPOLICY', `${file}: ${r.error}`, { field: r.error.split(':')[0] });
  return r.value;
}

export function canonicalPolicy(p: UnsignedPolicy): Uint8Array {
  const { version, network, serial, issued } = p;
  const rules = p.rules.map(({ id, from, to, proto, ports }) => ({ id, from, to, proto, ports }));
  return utf8.encode(POLICY_LABEL + JSON.stringify({ version, network, serial, issued, rules }));
}

export function serializePolicy(p: NetworkPolicy): string {
  const { version, network, serial, issued, signature } = p;
  const rules = p.rules.map(({ id, from, to, proto, ports }) => ({ id, from, to, proto, ports }));
  return JSON.stringify({ version, network, serial, issued, rules, signature });
}

/** Signs a policy with the network key; throws EPOLICY naming the bad field. */
export function signPolicy(
  ed: Ed25519,
  secretKey: Uint8Array,
  input: { network: string; serial: number; rules: readonly PolicyRule[]; now?: Date },
): NetworkPolicy {
  const unsigned: UnsignedPolicy = {
    version: 1,
    network: checkName(input.network, 'network'),
    serial: input.serial,
    issued: (input.now ?? new Date()).toISOString(),
    rules: input.rules.map((r) => ({ ...r })),
  };
  const signature = Buffer.from(ed.sign(canonicalPolicy(unsigned), secretKey)).toString('base64');
  const checked = parsePolicy(serializePolicy({ ...unsigned, signature }));
  if (!checked.ok) throw new CladnetError('EPOLICY', `policy: ${checked.error}`, { field: checked.error.split(':')[0] });
  return checked.value;
}

/** What a verified policy holder needs of the trust anchor (cert.ts TrustAnchor). */
export interface PolicyVerifier {
  verifyPolicy(p: NetworkPolicy): string | null;
}

/**
 * The newest verified policy of one network, as an agent holds it. `apply` takes an etcd value:
 * garbled, forged (not the network key's), for another network, or not newer than the one held
 * (a replay of an older policy): ignored with a warning (once per mod revision) and counted; the
 * last valid policy stays. A delete is ignored too (only a newer signed policy changes it).
 */
export class PolicyHolder {
  current: NetworkPolicy | null = null;
  /** Distinct (mod revision) values ignored as garbled or forged. */
  invalid = 0;
  /** Distinct values ignored as older than (or as old as, but different from) the one held. */
  stale = 0;
  private warned = '';

  constructor(
    private readonly network: string,
    private readonly trust: PolicyVerifier | null,
    private readonly log: Logger,
  ) {}

  /** True when the policy changed. */
  apply(value: Buffer | string | object, modRevision: string, deleted = false): boolean {
    const etcdKey = policyKey(this.network);
    if (deleted) {
      if (this.current !== null && this.warned !== `${modRevision}:deleted`) {
        this.warned = `${modRevision}:deleted`;
        this.log.warn({ etcdKey, serial: this.current.serial }, 'policy deleted from etcd; still applying the last signed one');
      }
      return false;
    }
    const p = parsePolicy(value, { network: this.network });
    const error = !p.ok ? p.error : this.trust ? this.trust.verifyPolicy(p.value) : 'the network has no trust anchor to verify it against';
    if (error !== null || !p.ok) {
      if (this.warned !== modRevision) {
        this.warned = modRevision;
        this.invalid++;
        this.log.warn({ etcdKey, modRevision, error }, 'ignoring invalid policy');
      }
      return false;
    }
    const cur = this.current;
    if (cur !== null && cur.signature === p.value.signature) return false;
    if (cur !== null && p.value.serial <= cur.serial) {
      if (this.warned !== modRevision) {
        this.warned = modRevision;
        this.stale++;
        this.log.warn({ etcdKey, modRevision, serial: p.value.serial, held: cur.serial }, 'ignoring a policy not newer than the one applied (replay?)');
      }
      return false;
    }
    this.current = p.value;
    this.log.info({ serial: p.value.serial, rules: p.value.rules.length }, 'network policy applied');
    return true;
  }
}

const PROTO_NUM: Record<PolicyProto, number> = { any: PROTO_ANY, icmp: PROTO_ICMP, tcp: PROTO_TCP, udp: PROTO_UDP };

/** A member as the policy sees it: name, overlay address and its certificate's groups. */
export interface PolicyMember {
  name: string;
  overlayIp: string;
  groups: readonly string[];
}

export function memberOf(cert: Pick<HostCert, 'name' | 'overlayIp' | 'groups'>): PolicyMember {
  return { name: cert.name, overlayIp: cert.overlayIp, groups: cert.groups ?? [] };
}

function selects(sel: string, m: PolicyMember): boolean {
  if (sel === 'any') return true;
  if (sel.startsWith('host:')) return sel.slice(5) === m.name;
  if (sel.startsWith('group:')) return m.groups.includes(sel.slice(6));
  return false;
}

/**
 * The policy for host `self` (its own certificate's name and groups), with sources resolved over
 * the trusted peers (their certificates' names, addresses and groups): only rules whose `to`
 * names self; host and group sources become the peers' overlay addresses, CIDRs stay prefixes.
 */
export function compilePolicy(policy: NetworkPolicy, self: PolicyMember, peers: readonly PolicyMember[]): CompiledPolicy {
  const rules: CompiledRule[] = [];
  const sources: string[] = [];
  policy.rules.forEach((r, index) => {
    if (!selects(r.to, self)) return;
    let lo = 0;
    let hi = 65535;
    if (r.ports !== undefined) {
      const [a, b] = r.ports.split('-');
      lo = Number(a);
      hi = Number(b ?? a);
    }
    const rule: CompiledRule = { index, proto: PROTO_NUM[r.proto], portLo: lo, portHi: hi };
    if (r.from.includes('/')) rule.cidr = true; // an IPv4 CIDR: IPv4 packets only (dataplane/policy.ts)
    rules.push(rule);
    sources.push(r.from);
  });
  const cidr = sources.map((s) => (s === 'any' ? { base: 0, len: 0 } : s.includes('/') ? parsePrefix(s) : null));
  const peerRules = peers.map((m) => {
    const ip = parseIpv4(m.overlayIp) ?? 0;
    const list: number[] = [];
    sources.forEach((s, k) => {
      const c = cidr[k];
      if (c ? c.len === 0 || ((ip >>> (32 - c.len)) << (32 - c.len)) >>> 0 === c.base : selects(s, m)) list.push(k);
    });
    return { ip, rules: list };
  });
  const other = cidr.flatMap((c, rule) => (c ? [{ rule, base: c.base, len: c.len }] : []));
  const open = rules.some((r, k) => sources[k] === 'any' && r.proto === PROTO_ANY);
  // (an any/any rule ahead of nothing else still lets everything in: no filtering needed)
  return { serial: policy.serial, ruleCount: policy.rules.length, open, rules, peers: peerRules, other };
}
