// The create form's checks, the same as the server's (crates/paddock-api:
// ClusterSpec's validation), with the server's field paths: what the server
// would refuse is said beside its field before the form is sent. No DOM
// here: crates/paddock-console/tests/validation.rs runs these under Node
// against the server's own validation on the same inputs.

export const MAX_CLUSTER_NAME = 40;
export const MAX_POOL_NAME = 20;
export const MAX_CPU = 256;
export const MIN_MEMORY = 128 * 2 ** 20;
export const MAX_POOL_REPLICAS = 1000;

const UNITS = { "": 1, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15 };

/** Bytes of a Kubernetes quantity such as "512Mi" or "2G"; NaN if it is none. */
export function bytes(q) {
  if (typeof q === "number") return q;
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$/.exec(String(q || "").trim());
  return m ? Number(m[1]) * UNITS[m[2] || ""] : NaN;
}

export function human(n) {
  if (!Number.isFinite(n)) return "?";
  for (const [u, f] of [["Ti", 2 ** 40], ["Gi", 2 ** 30], ["Mi", 2 ** 20]]) {
    if (n >= f) return `${+(n / f).toFixed(1)} ${u}`;
  }
  return `${n} B`;
}

/** Checks of the create form: field path -> message, as the server names fields. */
export function checkCluster(spec, name) {
  const errs = {};
  const label = (field, v, max) => {
    if (!v) errs[field] = "Required.";
    else if (v.length > max) errs[field] = `Must be no more than ${max} characters.`;
    else if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(v)) errs[field] = "Lowercase letters, digits and '-', starting and ending with a letter or digit.";
  };
  label("metadata.name", name, MAX_CLUSTER_NAME);
  const size = (p, s) => {
    if (!Number.isInteger(s.cpu) || s.cpu < 1 || s.cpu > MAX_CPU) errs[`${p}.cpu`] = `Must be a whole number from 1 to ${MAX_CPU}.`;
    const mem = bytes(s.memory);
    if (Number.isNaN(mem)) errs[`${p}.memory`] = "Not a quantity: write it like 512Mi or 2Gi.";
    else if (mem < MIN_MEMORY) errs[`${p}.memory`] = "Must be at least 128Mi.";
    const disk = bytes(s.disk);
    if (Number.isNaN(disk)) errs[`${p}.disk`] = "Not a quantity: write it like 10Gi.";
    else if (disk < 2 ** 30) errs[`${p}.disk`] = "Must be at least 1Gi.";
  };
  if (![1, 3].includes(spec.controlPlane.replicas)) errs["spec.controlPlane.replicas"] = "1, or 3 for high availability.";
  size("spec.controlPlane", spec.controlPlane);
  const seen = new Set();
  spec.nodePools.forEach((p, i) => {
    const f = `spec.nodePools[${i}]`;
    label(`${f}.name`, p.name, MAX_POOL_NAME);
    if (p.name && seen.has(p.name)) errs[`${f}.name`] = "Pool names must be unique.";
    seen.add(p.name);
    if (!Number.isInteger(p.replicas) || p.replicas < 0 || p.replicas > MAX_POOL_REPLICAS) errs[`${f}.replicas`] = `Must be a whole number from 0 to ${MAX_POOL_REPLICAS}.`;
    size(f, p);
  });
  return errs;
}
