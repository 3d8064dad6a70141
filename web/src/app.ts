// The browser client of contimg-grpc: lists images, reads a lightcurve and watches a job through
// the server's web gateway (`contimg-server serve --web-port`), over gRPC-Web or Connect (JSON),
// with clients generated from ../protos by `npm run build` (src/gen/, not committed).
//
// Query parameters: api (the gateway's base URL, required), transport (grpcweb, the default, or
// connect), token (a bearer token), filter (ListImages filter), source (a source name for the
// lightcurve) and job (a job name to watch). The page reports its progress for tests in
// document.body.dataset.status: loading, then ready (images and lightcurve rendered, and the watch
// stream open: its first event, the job's SNAPSHOT, rendered) or error (#error holds the code, the
// message and, in data-details, the types of the error's details); dataset.watch becomes "ended"
// when the job reaches a final state (or "left" when the page went away first).

import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { type Image, Image_Type, ImageService } from "./gen/dsa110/contimg/v1/images_pb";
import { type JobEvent, JobEvent_Type, Job_Stage, Job_State, JobService } from "./gen/dsa110/contimg/v1/jobs_pb";
import { type PhotometryMeasurement, SourceService } from "./gen/dsa110/contimg/v1/sources_pb";

type Status = "loading" | "ready" | "error";

interface Params {
  api: string;
  transport: "grpcweb" | "connect";
  token: string;
  filter: string;
  source: string;
  job: string;
}

function readParams(search: string): Params {
  const query = new URLSearchParams(search);
  const api = query.get("api");
  if (!api) {
    throw new ConnectError("the query parameter `api` (the gateway's base URL) is required", Code.InvalidArgument);
  }
  const transport = query.get("transport") ?? "grpcweb";
  if (transport !== "grpcweb" && transport !== "connect") {
    throw new ConnectError(`transport must be grpcweb or connect, not ${transport}`, Code.InvalidArgument);
  }
  return {
    api,
    transport,
    token: query.get("token") ?? "",
    filter: query.get("filter") ?? "",
    source: query.get("source") ?? "",
    job: query.get("job") ?? "",
  };
}

function makeTransport(params: Params): Transport {
  const interceptors: Interceptor[] = [];
  if (params.token) {
    const bearer = `Bearer ${params.token}`;
    interceptors.push((next) => (request) => {
      request.header.set("Authorization", bearer);
      return next(request);
    });
  }
  if (params.transport === "connect") {
    return createConnectTransport({ baseUrl: params.api, useBinaryFormat: false, interceptors });
  }
  return createGrpcWebTransport({ baseUrl: params.api, useBinaryFormat: true, interceptors });
}

// ---- rendering -------------------------------------------------------------------------------

function element(id: string): HTMLElement {
  const found = document.getElementById(id);
  if (!found) {
    throw new Error(`index.html has no #${id}`);
  }
  return found;
}

function setStatus(status: Status): void {
  document.body.dataset.status = status;
}

/** The enum value's name as the protos spell it without their prefix (`RUNNING`), or its number. */
function enumName(values: Record<number, string>, value: number): string {
  return values[value] ?? String(value);
}

/** Code.InvalidArgument -> "INVALID_ARGUMENT", the name gRPC and the server's docs use. */
function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function renderImages(images: readonly Image[], total: number): void {
  const list = element("images");
  list.replaceChildren(
    ...images.map((image) => {
      const item = document.createElement("li");
      item.dataset.name = image.name;
      item.textContent =
        `${image.name} ${enumName(Image_Type, image.type)} mid_mjd=${image.midMjd.toFixed(5)} ` +
        `noise=${image.noiseJy.toExponential(2)} Jy ${image.path}`;
      return item;
    }),
  );
  list.dataset.total = String(total);
}

function renderLightcurve(name: string, points: readonly PhotometryMeasurement[]): void {
  const table = element("lightcurve");
  const body = table.querySelector("tbody") ?? table.appendChild(document.createElement("tbody"));
  body.replaceChildren(
    ...points.map((point) => {
      const row = document.createElement("tr");
      for (const cell of [
        point.observationMjd.toFixed(5),
        point.peakFluxJy.toPrecision(4),
        point.peakFluxErrJy.toPrecision(2),
        point.image,
      ]) {
        row.appendChild(document.createElement("td")).textContent = cell;
      }
      return row;
    }),
  );
  table.dataset.source = name;
  table.dataset.count = String(points.length);
}

function renderEvent(event: JobEvent): void {
  const item = document.createElement("li");
  const state = event.job ? enumName(Job_State, event.job.state) : "";
  const stage = event.job ? enumName(Job_Stage, event.job.stage) : "";
  item.dataset.sequence = event.sequence.toString();
  item.dataset.type = enumName(JobEvent_Type, event.type);
  item.dataset.state = state;
  item.textContent = `#${event.sequence} ${item.dataset.type} ${state} ${stage} ${event.job?.progressPercent ?? 0}%`;
  element("events").appendChild(item);
}

function renderError(error: unknown): void {
  const failure = ConnectError.from(error);
  const box = element("error");
  box.dataset.code = codeName(failure.code);
  // The rich details' types (google.rpc.ErrorInfo, google.rpc.BadRequest, ...), as received.
  box.dataset.details = failure.details.map((detail) => ("type" in detail ? detail.type : detail.desc.typeName)).join(",");
  box.textContent = `${codeName(failure.code)}: ${failure.rawMessage}`;
  box.hidden = false;
  setStatus("error");
}

// ---- the calls -------------------------------------------------------------------------------

async function main(): Promise<void> {
  setStatus("loading");
  const params = readParams(window.location.search);
  const transport = makeTransport(params);
  const images = createClient(ImageService, transport);
  const sources = createClient(SourceService, transport);
  const jobs = createClient(JobService, transport);

  const page = await images.listImages({ pageSize: 5, filter: params.filter });
  renderImages(page.images, page.totalSize);

  if (params.source) {
    const points: PhotometryMeasurement[] = [];
    for await (const message of sources.getLightcurve({ name: params.source })) {
      points.push(...message.points);
    }
    renderLightcurve(params.source, points);
  }

  if (!params.job) {
    setStatus("ready");
    return;
  }
  // A page that goes away ends its watch: a browser may keep a hidden page (and its open stream)
  // in its back/forward cache, which would hold a watch slot of the caller's on the server.
  const leaving = new AbortController();
  window.addEventListener("pagehide", () => leaving.abort(), { once: true });
  try {
    for await (const event of jobs.watchJob({ name: params.job }, { signal: leaving.signal })) {
      renderEvent(event);
      if (document.body.dataset.status === "loading") {
        setStatus("ready"); // the SNAPSHOT: the stream is open, every later change comes on it
      }
    }
  } catch (error) {
    if (!leaving.signal.aborted) {
      throw error;
    }
  }
  document.body.dataset.watch = leaving.signal.aborted ? "left" : "ended";
}

// A page brought back from the back/forward cache has lost its watch (pagehide ended it): start over.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) {
    window.location.reload();
  }
});
main().catch(renderError);
