// LLF gateway: route an OpenAI request to the upstream of the model its JSON body names
// (nginx's njs module, js_content). The client's key and limits were checked before
// (the location's rewrite and preaccess phases); nginx has read the body into memory
// (client_body_buffer_size = client_max_body_size). The request goes on by an internal
// redirect to the named location @llf_gateway_model, which proxies it, body intact and
// the reply unbuffered, to $llf_gateway_upstream. Models nobody serves get OpenAI's 404
// from here. The fleet's models: $llf_gateway_models_file, which the health checker
// (llf_gateway_health.py) writes in OpenAI's list format, also served as GET /v1/models.
import fs from 'fs';

// the health checker's upstream_name(): "llf_model_" + the name's UTF-8 bytes in hex
function upstreamName(model) {
    return 'llf_model_' + Buffer.from(model, 'utf8').toString('hex');
}

function failure(status, message, type, param) {
    return {status: status, body: JSON.stringify({error: {message: message, type: type, param: param, code: status}})};
}

// What to do with a request: {upstream} or {status, body}. `models` are the served names.
function choose(method, body, models) {
    if (method !== 'POST') {
        return failure(405, 'Method ' + method + ' is not allowed here: send a POST with a JSON body',
                       'MethodNotAllowed', null);
    }
    let request;
    try {
        request = JSON.parse(body || '');
    } catch (e) {
        return failure(400, 'The request body is not JSON: send a JSON object with "model"', 'BadRequestError', null);
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request)) {
        return failure(400, 'The request body is not a JSON object: send one with "model"', 'BadRequestError', null);
    }
    const model = request.model;
    if (typeof model !== 'string' || model.length === 0) {
        return failure(404, 'The request names no model: set "model" to one that GET /v1/models lists.',
                       'NotFoundError', 'model');
    }
    if (models.indexOf(model) < 0) {
        return failure(404, 'The model `' + model + '` does not exist.', 'NotFoundError', 'model');
    }
    return {upstream: upstreamName(model)};
}

function servedModels(text) {
    return JSON.parse(text).data.map(m => m.id);
}

function route(r) {
    let models;
    try {
        models = servedModels(fs.readFileSync(r.variables.llf_gateway_models_file, 'utf8'));
    } catch (e) {
        r.error('llf gateway: cannot read the models file: ' + e);
        const out = failure(503, 'The gateway has no list of models yet: retry later', 'ServiceUnavailable', null);
        r.return(out.status, out.body);
        return;
    }
    // the body as text (requestText is a byte string before njs 0.8.5)
    const body = r.requestBuffer ? r.requestBuffer.toString('utf8') : '';
    const choice = choose(r.method, body, models);
    if (choice.upstream === undefined) {
        r.return(choice.status, choice.body);
        return;
    }
    r.variables.llf_gateway_upstream = choice.upstream;
    r.internalRedirect('@llf_gateway_model');
}

export default {route, choose, upstreamName, servedModels};
