"""The bench's and the report's sentences (report/lines.py), from records made by hand."""

from pipeline.measure.forward import Record


def test_the_decode_lines_state_a_quantized_decoders_rate_against_fp32():
    from pipeline.measure.decode import decode_rows
    from pipeline.report.lines import decode_lines

    e2e = [
        {"variant": "baseline", "threads": 1, "runtime": rt, "ttft_ms": 1.0,
         "tokens_per_s": rate, "total_s": 256 / rate}
        for rt, rate in (("ort-opt", 20.0), ("ort-int4", 70.0), ("ort-int8", 45.0), ("genai", 22.0))
    ]  # fmt: skip
    data = {"variants": ["baseline"], "steps": [], "end_to_end": e2e}
    lines = decode_lines({**data, **decode_rows(data)})
    assert "ort-int4: whole generation at 3.50x to 3.50x the tokens/s of the float32" in "\n".join(
        lines
    )
    assert any(line.startswith("ort-int8: whole generation at 2.25x") for line in lines)
    assert "our ort-opt loop vs genai on the same graph, whole generation: 1.10x to 1.10x" in (
        "\n".join(lines)
    )


def _record(runtime, seq_len, p50):
    return Record(runtime, "baseline", 1, seq_len, p50, p50, p50, p50, 0.0, 5, gflops=1.0)


def test_speedup_lines_name_the_reference_and_where_a_runtime_is_slower():
    from pipeline.report.lines import speedup_lines

    records = [_record("torch", 16, 2.0), _record("ort-opt", 16, 1.0),
               _record("torch", 512, 10.0), _record("ort-opt", 512, 20.0)]  # fmt: skip
    (line,) = speedup_lines(records)
    assert line.startswith("ort-opt: geometric-mean speed-up over torch 1.00x over 2 points")
    assert line.endswith("slower beyond noise at baseline/1t/S=512")
