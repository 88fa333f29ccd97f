// Quantities for a person, as the CLI prints them (core/resources.py
// format_human): bytes in the largest binary unit with one decimal (23.5Gi,
// 310Mi), cpu as cores or millicores (2, 500m), the rest as counts. The API
// sends exact base units beside its canonical text ("24683792Ki"); the
// dashboard formats the base units.

const BINARY = [["Ki", 2 ** 10], ["Mi", 2 ** 20], ["Gi", 2 ** 30], ["Ti", 2 ** 40],
  ["Pi", 2 ** 50], ["Ei", 2 ** 60]];

export function unitOf(resource) {
  if (resource === "cpu") return "milli";
  if (resource.endsWith("memory") || resource.endsWith("storage")) return "bytes";
  return "count";
}

export function human(resource, base) {
  if (base === null || base === undefined) return "–";
  const unit = unitOf(resource);
  if (unit === "milli") return base % 1000 === 0 ? String(base / 1000) : `${base}m`;
  if (unit !== "bytes" || Math.abs(base) < 1024) return String(base);
  const sign = base < 0 ? "-" : "";
  const left = Math.abs(base);
  let i = 0;
  while (i + 1 < BINARY.length && BINARY[i + 1][1] <= left) i += 1;
  // 1023.96Mi rounds to 1024.0Mi: the next unit says it as 1Gi.
  if (Math.round((left / BINARY[i][1]) * 10) / 10 >= 1024 && i + 1 < BINARY.length) i += 1;
  const [suffix, size] = BINARY[i];
  return sign + (Math.round((left / size) * 10) / 10).toFixed(1).replace(/\.0$/, "") + suffix;
}

/** "cpu=2 memory=23.5Gi" for a vector in base units. */
export function humanVector(vector) {
  return Object.entries(vector || {}).map(([r, v]) => `${r}=${human(r, v)}`).join(" ");
}

/** A quantity as a user wrote it in a job's spec: a plain number of bytes is
 * shown in binary units; text ("4Gi", "500m") as written. */
export function asWritten(resource, value) {
  return typeof value === "number" && unitOf(resource) === "bytes" ? human(resource, value)
    : String(value);
}
