-- The fakes stand in for the C modules, so they must agree with them: the
-- SHA-256 vectors come from sha256sum, the JSON cases from the encoding
-- rules documented in lua/core/json.lua (and core/bind_json.c).
local helpers = require("spec.helpers")

local hash = helpers.fakes.hash
local json = helpers.fakes.json
local log = helpers.fakes.log

describe("fake hash.sha256", function()
    local vectors = {
        [""] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ["abc"] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ["abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"] =
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ["a\0b"] = "59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138",
        ["ñandú"] = "43dbd6bf7148e6e6584eee6d8b61ab8e5dd76374c4587cdabd50a3274e11f9d3",
    }
    -- Lengths around the 64-byte block and the 56-byte padding boundary.
    local repeated_a = {
        [55] = "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
        [56] = "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
        [63] = "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34",
        [64] = "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
        [65] = "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0",
        [119] = "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb",
        [128] = "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e",
    }

    it("matches sha256sum on known inputs", function()
        for input, digest in pairs(vectors) do
            assert.equal(digest, hash.sha256(input))
        end
    end)

    it("matches sha256sum across block boundaries", function()
        for length, digest in pairs(repeated_a) do
            assert.equal(digest, hash.sha256(string.rep("a", length)), "length " .. length)
        end
    end)

    it("converts numbers like luaL_checklstring and rejects other types", function()
        assert.equal(hash.sha256("42"), hash.sha256(42))
        assert.has_error(function() hash.sha256(nil) end)
        assert.has_error(function() hash.sha256({}) end)
    end)
end)

describe("fake json.encode", function()
    it("sorts object keys and writes no white space", function()
        assert.equal('{"a":1,"b":{"x":true,"y":false},"c":"z"}',
            json.encode({ c = "z", a = 1, b = { y = false, x = true } }))
    end)

    it("keeps a marked empty list as [] and an unmarked empty table as {}", function()
        assert.equal('{"list":[],"map":{}}', json.encode({ list = json.array(), map = {} }))
        assert.equal("[1,2]", json.encode(json.array({ 1, 2 })))
    end)

    it("encodes a plain sequence as an array, as the C module does", function()
        assert.equal('["a","b"]', json.encode({ "a", "b" }))
    end)

    it("escapes quotes, backslashes and control bytes and copies UTF-8", function()
        assert.equal('"q\\"b\\\\n\\nt\\tc\\u0001é\127"', json.encode('q"b\\n\nt\tc\1é\127'))
    end)

    it("prints integral numbers as integers and others with 17 digits", function()
        assert.equal("[1,2,1.5,-3,0.10000000000000001]", json.encode(json.array({ 1, 2.0, 1.5, -3, 0.1 })))
    end)

    it("encodes nil and json.null as null", function()
        assert.equal('{"a":null}', json.encode({ a = json.null }))
        assert.equal("null", json.encode(nil))
    end)

    it("raises on what JSON cannot hold", function()
        assert.has_error(function() json.encode({ [1] = 1, [3] = 3 }) end)
        assert.has_error(function() json.encode({ f = print }) end)
        assert.has_error(function() json.encode(0 / 0) end)
        assert.has_error(function() json.encode(math.huge) end)
        local cycle = {}
        cycle.self = cycle
        assert.has_error(function() json.encode(cycle) end)
    end)

    it("gives equal text for equal tables built in any order", function()
        local a, b = {}, {}
        for i = 1, 50 do
            a["k" .. i] = i
        end
        for i = 50, 1, -1 do
            b["k" .. i] = i
        end
        assert.equal(json.encode(a), json.encode(b))
    end)
end)

describe("fake json.decode", function()
    it("round-trips canonical text, marking arrays", function()
        local text = '{"a":[1,2.5,{"x":null}],"b":"\\u00e9\\ud83d\\ude00\\n","c":[],"d":true}'
        local value = assert(json.decode(text))
        assert.is_true(json.is_array(value.c))
        assert.equal(json.null, value.a[3].x)
        assert.equal("é😀\n", value.b)
        assert.equal('{"a":[1,2.5,{"x":null}],"b":"é😀\\n","c":[],"d":true}', json.encode(value))
    end)

    it("returns nil and a message with the byte offset on malformed text", function()
        local value, err = json.decode("[1,")
        assert.is_nil(value)
        assert.matches("at byte %d+", err)
        assert.is_nil((json.decode('{"a":1} x')))
    end)
end)

describe("fake log", function()
    it("records lines with string fields instead of printing", function()
        log.clear()
        log.info("planned", { actions = 3, ignored = nil })
        assert.same({ { level = "info", message = "planned", fields = { actions = "3" } } }, log.lines)
        log.clear()
    end)
end)
