from pipeline.formats import Format, caps_str, intersect_caps


def test_intersection_keeps_preference_order_of_the_first():
    a = Format.audio(("pcm_s16", "pcm_f32"), (48000, 16000, 8000), 1)
    b = Format.audio("pcm_s16", (8000, 16000), None)
    f = a.intersect(b)
    assert f.rate == (16000, 8000)
    assert f.encoding == ("pcm_s16",)
    assert f.channels == (1,)


def test_intersection_of_disjoint_formats_is_none():
    assert Format.audio("pcm_s16", 8000).intersect(Format.audio("pcm_s16", 16000)) is None
    assert Format.audio().intersect(Format.encoded("opus")) is None


def test_any_intersects_everything():
    f = Format.encoded("opus", 48000, 2)
    assert Format.any().intersect(f) == f
    assert f.intersect(Format.any()) == f


def test_fixate_prefers_given_values_then_first_choice_then_defaults():
    pattern = Format.audio(("pcm_s16", "pcm_f32"), (16000, 8000), None)
    assert pattern.fixate(prefer=Format.audio("pcm_f32", 8000, 2)) == Format.audio(
        "pcm_f32", 8000, 2)
    assert pattern.fixate() == Format.audio("pcm_s16", 16000, 1)
    assert Format.audio("pcm_s16").fixate().value("rate") == 48000


def test_caps_intersection_and_text():
    caps = intersect_caps((Format.audio("pcm_s16", 8000), Format.audio("pcm_s16", 16000)),
                          (Format.audio(None, (16000, 48000)),))
    assert caps == (Format.audio("pcm_s16", 16000),)
    assert caps_str(caps) == "audio/pcm_s16 16000 Hz any ch"
    assert caps_str(()) == "nothing"
