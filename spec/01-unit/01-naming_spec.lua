local helpers = require("spec.helpers")
local accounts = require("spec.fixtures.accounts")
local rules = require("rules")

local sha256 = helpers.fakes.hash.sha256

describe("worker_name", function()
    it("is sync-airbnb-worker-<id> for a valid DNS label fragment", function()
        assert.equal("sync-airbnb-worker-310316675", rules.worker_name("310316675"))
        assert.equal("sync-airbnb-worker-a-1", rules.worker_name("a-1"))
    end)

    it("keeps the plain form up to exactly 63 characters", function()
        local id = string.rep("1", 63 - #"sync-airbnb-worker-")
        assert.equal("sync-airbnb-worker-" .. id, rules.worker_name(id))
        local longer = rules.worker_name(id .. "1")
        assert.equal(63, #longer)
        assert.matches("%-" .. sha256(id .. "1"):sub(1, 10) .. "$", longer)
    end)

    it("sanitizes an uppercase id and adds the sha256 of the raw id", function()
        assert.equal("sync-airbnb-worker-abc-" .. sha256("ABC"):sub(1, 10), rules.worker_name("ABC"))
    end)

    it("gives the empty id a name of its own", function()
        assert.equal("sync-airbnb-worker-x-" .. sha256(""):sub(1, 10), rules.worker_name(""))
    end)

    it("cuts a 70-character id to 63 and keeps the hash suffix", function()
        local name = rules.worker_name(accounts.odd_ids.seventy)
        assert.equal(63, #name)
        assert.dns_label(name)
        assert.matches("%-" .. sha256(accounts.odd_ids.seventy):sub(1, 10) .. "$", name)
    end)

    it("turns unicode, '/' and other symbols into '-'", function()
        assert.matches("^sync%-airbnb%-worker%-team%-310316675%-%x+$", rules.worker_name(accounts.odd_ids.slash))
        assert.matches("^sync%-airbnb%-worker%-and%-%x+$", rules.worker_name(accounts.odd_ids.unicode))
        assert.matches("^sync%-airbnb%-worker%-x%-%x+$", rules.worker_name(accounts.odd_ids.symbols))
    end)

    it("is always a DNS-1123 label of at most 63 characters", function()
        for what, id in pairs(accounts.odd_ids) do
            assert.dns_label(rules.worker_name(id), what)
        end
        for byte = 0, 255 do
            assert.dns_label(rules.worker_name(string.char(byte)))
            assert.dns_label(rules.worker_name(string.rep(string.char(byte), 80)))
        end
    end)

    it("never gives two distinct ids the same name", function()
        for _, pair in ipairs(accounts.alike_pairs) do
            assert.are_not.equal(rules.worker_name(pair[1]), rules.worker_name(pair[2]),
                string.format("%q vs %q", pair[1], pair[2]))
        end
        local seen = {}
        for _, id in pairs(accounts.odd_ids) do
            local name = rules.worker_name(id)
            assert.is_nil(seen[name], name)
            seen[name] = id
        end
    end)

    it("returns nil and a message for a non-string id, without raising", function()
        for _, id in ipairs({ 310316675, true, {} }) do
            local name, err = rules.worker_name(id)
            assert.is_nil(name)
            assert.matches("account_id must be a string, got " .. type(id), err)
        end
        assert.is_nil((rules.worker_name(nil)))
    end)
end)

describe("labels", function()
    it("are the seed's selector plus the app.kubernetes.io set", function()
        assert.same({
            app = "sync-airbnb-worker",
            ["account-id"] = "310316675",
            ["app.kubernetes.io/name"] = "sync-airbnb-worker",
            ["app.kubernetes.io/instance"] = "sync-airbnb-worker-310316675",
            ["app.kubernetes.io/managed-by"] = "sync-airbnb-operator",
            ["app.kubernetes.io/part-of"] = "sync-airbnb",
        }, rules.labels("310316675"))
    end)

    it("use the raw id as account-id whenever it is a valid label value", function()
        for _, id in ipairs({ "ABC", "Abc123", "a_b", "a.b.c", "" }) do
            assert.equal(id, rules.labels(id)["account-id"])
        end
    end)

    it("sanitize and hash an id that is not a label value", function()
        assert.equal("team-310316675-" .. sha256("team/310316675"):sub(1, 10),
            rules.labels(accounts.odd_ids.slash)["account-id"])
        local long = rules.labels(accounts.odd_ids.seventy)["account-id"]
        assert.equal(63, #long)
    end)

    it("are valid label values for every odd id and every single byte", function()
        local ids = {}
        for _, id in pairs(accounts.odd_ids) do
            ids[#ids + 1] = id
        end
        for byte = 0, 255 do
            ids[#ids + 1] = string.char(byte)
        end
        for _, id in ipairs(ids) do
            for key, value in pairs(rules.labels(id)) do
                assert.label_value(value, key .. " of " .. string.format("%q", id))
            end
        end
    end)

    it("give ids that sanitize alike distinct account-id values", function()
        for _, pair in ipairs(accounts.alike_pairs) do
            assert.are_not.equal(rules.labels(pair[1])["account-id"], rules.labels(pair[2])["account-id"])
        end
    end)

    it("return nil and a message for a non-string id", function()
        local labels, err = rules.labels(42)
        assert.is_nil(labels)
        assert.matches("must be a string", err)
    end)
end)
