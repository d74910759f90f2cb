"""The phrase lists of tools/make_prefs_data.py: the topics (questions, helpful answers, subjects)
and the phrasings of the other answer kinds, each in a train part and a held-out (test) part.
Written for llmtune."""

from __future__ import annotations

# (questions, helpful answers, slot values): {x} is the slot.
TOPICS: list[tuple[list[str], list[str], list[str]]] = [
    (
        ["How do I reset my {x} password?", "I forgot my {x} password. What do I do?"],
        ["Tap 'Forgot password' on the {x} sign-in page.", "Use the reset link on the {x} login screen."],
        ["email", "banking app", "streaming", "work laptop", "game account", "shop account"],
    ),
    (
        ["Where is my {x} order?", "How can I track the {x} I ordered?"],
        ["Open Your orders and tap Track next to the {x}.", "The tracking link is in your {x} order email."],
        ["sofa", "headphones", "running shoes", "book", "phone case", "desk lamp"],
    ),
    (
        ["Can I get a refund for the {x}?", "How do I ask for my money back on the {x}?"],
        ["Yes, within 30 days: start it under Returns.", "Request it in Your orders; it takes 5 days."],
        ["broken kettle", "wrong size jacket", "late pizza", "cancelled concert", "faulty charger"],
    ),
    (
        ["When will my {x} be delivered?", "How long does delivery of a {x} take?"],
        ["Usually 2 to 4 working days for a {x}.", "Your {x} should arrive within 3 working days."],
        ["parcel", "mattress", "fridge", "grocery order", "bike"],
    ),
    (
        ["What time does the {x} open?", "When is the {x} open on weekends?"],
        ["The {x} opens at 9am, 10am on weekends.", "9am to 6pm weekdays, 10am to 4pm weekends."],
        ["library", "post office", "pharmacy", "bank branch", "swimming pool", "town hall"],
    ),
    (
        ["How do I cook {x}?", "What's the easiest way to make {x}?"],
        ["Simmer the {x} gently until tender, then season.", "Cook the {x} on medium heat and stir often."],
        ["rice", "lentils", "porridge", "scrambled eggs", "pasta", "quinoa"],
    ),
    (
        ["How long should I boil {x}?", "How many minutes do {x} need in boiling water?"],
        ["About 8 to 10 minutes for {x}.", "Boil the {x} for roughly 10 minutes."],
        ["eggs", "potatoes", "carrots", "broccoli", "corn cobs"],
    ),
    (
        ["What can I bring in my {x}?", "Are there limits on my {x}?"],
        ["One {x} up to 10 kg, liquids under 100 ml.", "Keep the {x} under 10 kg and liquids small."],
        ["cabin bag", "hand luggage", "carry-on", "backpack"],
    ),
    (
        ["How do I check in for my {x}?", "Can I check in online for my {x}?"],
        [
            "Yes: check in on the app 24 hours before the {x}.",
            "Use online check-in, open a day before the {x}.",
        ],
        ["flight", "ferry", "train to Paris", "coach trip"],
    ),
    (
        ["My {x} won't charge. What should I try?", "Why is my {x} not charging?"],
        ["Try another cable and clean the {x} charging port.", "Check the plug, then restart the {x}."],
        ["phone", "tablet", "laptop", "smartwatch", "power bank", "e-reader"],
    ),
    (
        ["How do I connect my {x} to the wifi?", "My {x} can't find the wifi. Help?"],
        [
            "Open wifi settings on the {x} and pick your network.",
            "Restart the router, then rejoin on the {x}.",
        ],
        ["printer", "smart TV", "laptop", "speaker", "games console"],
    ),
    (
        ["How do I pay my {x} bill?", "Where can I pay the {x} bill online?"],
        ["Pay the {x} bill under Billing in your account.", "Log in and choose Pay now on the {x} bill."],
        ["electricity", "water", "phone", "internet", "gas"],
    ),
    (
        ["Why is my {x} bill higher this month?", "My {x} bill went up. Why?"],
        [
            "Usage rose; the {x} bill breakdown shows where.",
            "Check the usage page: the {x} bill lists each charge.",
        ],
        ["energy", "mobile", "broadband", "council tax"],
    ),
    (
        ["How do I book a {x} appointment?", "Can I make a {x} appointment online?"],
        ["Yes, book a {x} slot on our website or app.", "Call us or pick a {x} slot online."],
        ["dentist", "GP", "haircut", "eye test", "car service", "vet"],
    ),
    (
        ["How do I move my {x} appointment?", "Can I reschedule my {x}?"],
        ["Open your booking and choose Change {x} time.", "Reschedule the {x} online up to a day before."],
        ["physio", "dental check-up", "MOT", "massage"],
    ),
    (
        ["How do I cancel my {x} subscription?", "I want to stop my {x} plan. How?"],
        [
            "Go to Account, then Subscription, then Cancel.",
            "Cancel the {x} plan in settings; it ends this month.",
        ],
        ["music", "gym", "meal kit", "newspaper", "video", "cloud storage"],
    ),
    (
        ["How do I change my {x}?", "Where can I update my {x}?"],
        ["Edit your {x} under Account, then Profile.", "Update the {x} in your account settings."],
        ["email address", "delivery address", "phone number", "username", "card details"],
    ),
    (
        ["How do I return a {x}?", "What's the return process for a {x}?"],
        ["Print the label in Returns and post the {x} back.", "Drop the {x} at any store with your receipt."],
        ["shirt", "pair of boots", "toaster", "rug", "toy"],
    ),
    (
        ["I lost my {x}. What now?", "What should I do about a lost {x}?"],
        [
            "Freeze the {x} in the app and order a new one.",
            "Call us to block the {x}; a new one comes in 5 days.",
        ],
        ["bank card", "credit card", "travel card", "library card"],
    ),
    (
        ["Does the {x} come with a warranty?", "How long is the warranty on the {x}?"],
        ["Yes, the {x} has a two-year warranty.", "Two years; register the {x} to claim."],
        ["washing machine", "vacuum cleaner", "coffee machine", "blender", "hair dryer"],
    ),
    (
        ["How do I use a {x}?", "Can I pay with a {x}?"],
        ["Enter the {x} code at checkout to use it.", "Yes, add the {x} code on the payment page."],
        ["gift card", "voucher", "discount code", "gift voucher"],
    ),
    (
        ["How often should I water my {x}?", "How much water does a {x} need?"],
        ["Water the {x} when the top soil feels dry.", "About once a week for a {x}, less in winter."],
        ["cactus", "fern", "tomato plant", "basil", "orchid"],
    ),
    (
        ["How do I get {x} out of my shirt?", "What removes {x} stains?"],
        ["Blot the {x} stain, then wash with cold water.", "Dab the {x} stain with soapy water, don't rub."],
        ["coffee", "red wine", "grass", "ink", "tomato sauce"],
    ),
    (
        ["How do I delete my {x} account?", "Can I close my {x} account?"],
        ["Yes: Settings, Privacy, then Delete account.", "Ask support to close it; data goes in 30 days."],
        ["shop", "forum", "fitness app", "photo app"],
    ),
    (
        ["Is the {x} wheelchair accessible?", "Does the {x} have step-free access?"],
        ["Yes, the {x} has ramps and a lift.", "Step-free entry is at the side of the {x}."],
        ["museum", "cinema", "station", "stadium", "theatre"],
    ),
    (
        ["Do you deliver to {x}?", "Can you ship my order to {x}?"],
        ["Yes, we ship to {x} in about 5 days.", "We do; {x} delivery is shown at checkout."],
        ["Ireland", "Spain", "Canada", "Norway", "Japan"],
    ),
    (
        ["How do I update my {x}?", "My {x} says an update is ready. What do I do?"],
        ["Open Settings, then Update, on the {x}.", "Plug in the {x} and tap Install update."],
        ["phone", "router", "smart TV", "laptop", "tablet"],
    ),
    (
        ["How do I store {x}?", "How long does {x} keep?"],
        ["Keep {x} cool and dry; it lasts a few days.", "Refrigerate {x} and use it within 3 days."],
        ["bread", "cooked rice", "fresh fish", "soup", "cut fruit"],
    ),
    (
        ["What's the best way to get to the {x}?", "How do I get to the {x} from the city centre?"],
        ["Take the number 12 bus; it stops at the {x}.", "The tram goes to the {x} in 15 minutes."],
        ["airport", "stadium", "hospital", "beach", "zoo"],
    ),
    (
        ["Can I change the date of my {x}?", "How do I move my {x} booking to another day?"],
        ["Yes, in Manage booking; fees may apply.", "Change the {x} date online up to 48 hours ahead."],
        ["hotel stay", "flight", "table booking", "car hire"],
    ),
    (
        ["Why was my {x} payment declined?", "My {x} payment failed. Why?"],
        ["Check the card details and that funds are there.", "Your bank may have blocked it; call them."],
        ["card", "online", "subscription", "checkout"],
    ),
    (
        ["How do I set up {x}?", "Can you help me turn on {x}?"],
        ["Turn on {x} in Settings, then Security.", "Open Security settings and enable {x}."],
        ["two-factor login", "a screen lock", "fingerprint login", "face unlock"],
    ),
    (
        ["How do I clean my {x}?", "What's the right way to clean a {x}?"],
        ["Wipe the {x} with a damp cloth and mild soap.", "Unplug it and clean the {x} with a soft cloth."],
        ["oven", "keyboard", "kettle", "fridge", "microwave"],
    ),
    (
        ["Where is the nearest {x}?", "Is there a {x} near the station?"],
        ["There's a {x} two streets from the station.", "Use the store finder; the closest {x} is nearby."],
        ["cash machine", "petrol station", "supermarket", "chemist", "car park"],
    ),
    (
        ["How do I add someone to my {x}?", "Can I share my {x} with family?"],
        ["Yes, invite them under {x} settings, Members.", "Add a member in the {x} account page."],
        ["streaming plan", "phone contract", "cloud storage", "insurance policy"],
    ),
    (
        ["What should I pack for {x}?", "What do I need for {x}?"],
        ["Pack layers, a rain jacket and snacks for {x}.", "Bring water, sun cream and comfy shoes for {x}."],
        ["a weekend hike", "a beach day", "a city break", "a camping trip"],
    ),
    (
        ["How do I make my {x} last longer?", "My {x} battery drains fast. Tips?"],
        ["Dim the screen and close apps on the {x}.", "Turn on battery saver on the {x}."],
        ["phone", "laptop", "tablet", "smartwatch"],
    ),
    (
        ["Can I bring my {x} on the train?", "Are {x} allowed on the bus?"],
        ["Yes, {x} are allowed if they don't block aisles.", "Yes, but keep {x} off the seats."],
        ["dogs", "bikes", "scooters", "prams"],
    ),
    (
        ["How do I get a copy of my {x}?", "Where can I download my {x}?"],
        ["Download the {x} from Documents in your account.", "Ask us and we'll email the {x} today."],
        ["invoice", "receipt", "contract", "statement", "policy document"],
    ),
    (
        ["How do I report a problem with my {x}?", "My {x} is faulty. Who do I tell?"],
        ["Use Report a fault in the app, with a photo.", "Contact support with your {x} order number."],
        ["boiler", "dishwasher", "heater", "television"],
    ),
]

# Phrasings, each list in two parts: train and held-out (test). A held-out answer never uses an
# opener, sign-off, evasion, insult or babble syllable that a training answer uses, so that a
# reward model is measured on how it reads answers, not on recognising a fixed vocabulary.
PHRASES: dict[str, dict[str, list[str]]] = {
    "train": {
        "polite_openers": [
            "Sure! ",
            "Happy to help! ",
            "Of course. ",
            "Good question! ",
            "Certainly. ",
            "No problem! ",
            "Thanks for asking. ",
            "Glad to help. ",
        ],
        "polite_closers": [
            " Hope that helps!",
            " Thank you!",
            " Have a nice day!",
            " Let me know if not.",
            "",
        ],
        "curt_openers": ["", "", "", "Just ", "Simple: ", "Fine. "],
        "evasive": [
            "I can't help with that.",
            "That's not something I can answer.",
            "I don't have that information.",
            "You'll have to ask someone else.",
            "I'm not able to discuss that.",
            "No idea, sorry.",
            "I can't say, I'm afraid.",
            "That's outside what I can do.",
            "I'd rather not answer that.",
            "Not something I deal with.",
            "I have nothing on that topic.",
        ],
        "rude": [
            "Figure it out yourself.",
            "Not my problem.",
            "Stop asking obvious questions.",
            "Ugh, read the manual.",
            "Why would I know? Go away.",
            "That's a dumb question.",
            "Don't waste my time.",
            "Look it up, lazy.",
            "Who cares? Not me.",
            "Seriously? Google it.",
            "Go bother someone else.",
        ],
        "syllables": [
            "tin",
            "tis",
            "on",
            "ple",
            "sup",
            "and",
            "the",
            "ca",
            "ro",
            "ment",
            "ly",
            "in",
            "st",
            "pa",
        ],
    },
    "test": {
        "polite_openers": [
            "Absolutely! ",
            "Great question. ",
            "I'd be glad to. ",
            "Thanks for getting in touch! ",
            "You bet! ",
            "Gladly. ",
        ],
        "polite_closers": [" Take care!", " Best wishes!", " Any more questions, just ask.", ""],
        "curt_openers": ["", "", "", "Easy: ", "Well, "],
        "evasive": [
            "Sorry, that's beyond me.",
            "I won't be answering this one.",
            "Can't comment on that, sorry.",
            "Someone else would know better.",
            "That isn't a thing I can address.",
            "I'll pass on this question.",
        ],
        "rude": [
            "What a stupid thing to ask.",
            "Leave me alone.",
            "Do your own homework.",
            "Can't you work that out? Honestly.",
            "Ask me when you've got a brain.",
            "Boring. Next.",
            "Stop pestering me.",
        ],
        "syllables": [
            "gru",
            "bel",
            "ox",
            "var",
            "mi",
            "dak",
            "zo",
            "lum",
            "fre",
            "ek",
            "nop",
            "hu",
            "wa",
            "qi",
        ],
    },
}
