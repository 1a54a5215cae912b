// The API's description of itself (/openapi.json), fetched once and shared by every page. The dashboard reads
// defaults, enums and bounds from it, so its forms and filters cannot drift from what the API accepts.

import { api } from "./api.js";

let cached = null;

/** The OpenAPI document: fetched (with the API key, like every call) on first use, then reused; a failure is retried next time. */
export function openapi() {
  if (!cached) {
    cached = api.get("openapi.json").catch((err) => {
      cached = null;
      throw err;
    });
  }
  return cached;
}

/** A named schema of components/schemas. */
export function component(doc, name) {
  const schema = doc && doc.components && doc.components.schemas && doc.components.schemas[name];
  if (!schema) throw new Error(`/openapi.json has no schema ${name}`);
  return schema;
}

/** The values of a named enum schema (e.g. "JobStatus"), in the API's order. */
export function enumValues(doc, name) {
  const values = component(doc, name).enum;
  if (!Array.isArray(values)) throw new Error(`/openapi.json: ${name} is not an enum`);
  return values;
}

function deref(doc, ref) {
  const prefix = "#/components/schemas/";
  if (!ref.startsWith(prefix)) throw new Error(`/openapi.json: cannot follow ${ref}`);
  return component(doc, ref.slice(prefix.length));
}

/**
 * A property's schema made plain: a $ref is followed, `anyOf: [X, {type: "null"}]` becomes X with
 * `nullable: true`, and the property's own keywords (default, title, description) win over the referenced ones.
 */
export function resolve(doc, node) {
  const { $ref, anyOf, ...own } = node;
  let inner = {};
  let nullable = false;
  if ($ref) {
    inner = resolve(doc, deref(doc, $ref));
  } else if (anyOf) {
    const options = anyOf.filter((option) => option.type !== "null");
    nullable = options.length < anyOf.length;
    inner = options.length === 1 ? resolve(doc, options[0]) : { anyOf: options };
  }
  return { ...inner, ...own, nullable: nullable || Boolean(inner.nullable) };
}

const dig = (value, keys) => keys.reduce((v, key) => (v !== null && typeof v === "object" && key in v ? v[key] : undefined), value);

/**
 * The resolved schema of a dotted field path of a named schema ("warmup.epochs" of "JobCreate").
 * Its `default` is what the API uses when the request leaves the field out: the default of the outermost
 * enclosing object that has one for it (JobCreate's `warmup` default), else the field's own.
 */
export function fieldSchema(doc, name, path) {
  const keys = path.split(".");
  let node = resolve(doc, component(doc, name));
  let inherited;
  keys.forEach((key, i) => {
    const property = node.properties && node.properties[key];
    if (!property) throw new Error(`/openapi.json: ${name} has no field ${path}`);
    node = resolve(doc, property);
    if (inherited === undefined && i < keys.length - 1) inherited = dig(node.default, keys.slice(i + 1));
  });
  return inherited === undefined ? node : { ...node, default: inherited };
}
