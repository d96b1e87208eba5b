from services.gateway.errors import APIError, param_from_loc


def test_param_from_loc_names_fields_like_the_request():
    assert param_from_loc(("body", "references", 2, "image")) == "references[2].image"
    assert param_from_loc(("body", "prompt")) == "prompt"
    assert param_from_loc(("body",)) == "body"
    assert param_from_loc(("query", "n")) == "n"
    assert param_from_loc(("body", "references", 0)) == "references[0]"
    assert param_from_loc(()) is None


def test_api_error_types_follow_status():
    assert APIError(400, "x", "m").type == "invalid_request_error"
    assert APIError(401, "x", "m").type == "authentication_error"
    assert APIError(429, "x", "m").type == "rate_limit_error"
    assert APIError(503, "x", "m").type == "service_unavailable"
    assert APIError(500, "x", "m").type == "server_error"
    body = APIError(400, "too_many_references", "words", "references").body()
    assert body.model_dump() == {"type": "invalid_request_error", "code": "too_many_references", "message": "words",
                                 "param": "references"}
