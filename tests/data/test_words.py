from reallod.data.words import words


def test_words_in_any_script():
    assert words("The Café's 2 cups") == ["the", "café", "s", "2", "cups"]
    assert words("红色杯子 left") == ["红", "色", "杯", "子", "left"]
    assert words("собака, рядом") == ["собака", "рядом"]
    assert words("e\u0301te\u0301") == ["été"]  # combining accents: one word, NFC
    assert words(" . ? ") == []
